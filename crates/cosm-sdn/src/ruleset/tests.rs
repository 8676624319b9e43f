use super::*;

#[test]
fn placeholder() {
    let t = tables(&HostNetworks::default());
    assert_eq!(t[0].chains.len(), 2);
}
