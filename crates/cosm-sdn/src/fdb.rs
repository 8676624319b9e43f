//! Head-end replication: on each `cvx<vni>`, exactly one all-zero FDB entry per peer VTEP.
//!
//! Only all-zero entries with a destination are added or removed; learned entries (a
//! remote MAC and the VTEP behind it) are left to the kernel.
//!
//! rtnetlink's `add_bridge(..).destination(..)` sends no `NTF_SELF` and always
//! `NLM_F_EXCL`, which the VXLAN driver refuses (EINVAL) and which cannot add a second
//! all-zero entry; the add request is therefore built by hand, as `bridge fdb append` does.

use crate::SdnError;
use cosm_wire::{vxlan_name, HostNetworks};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

const ZERO_MAC: [u8; 6] = [0; 6];

fn nl(action: &'static str, device: String) -> impl FnOnce(rtnetlink::Error) -> SdnError {
    move |source| SdnError::Netlink {
        action,
        device,
        source,
    }
}

/// The all-zero entries with an IPv4 destination, by device index.
async fn dump(handle: &Handle) -> Result<BTreeMap<u32, BTreeSet<Ipv4Addr>>, SdnError> {
    let entries: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list", "the bridge FDB".into()))?;
    let mut out: BTreeMap<u32, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for e in entries {
        let mut zero = false;
        let mut dst = None;
        for a in &e.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => zero = l.as_slice() == ZERO_MAC,
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                // In an AF_BRIDGE dump the destination is not parsed as an address.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
                }
                _ => {}
            }
        }
        if let (true, Some(dst)) = (zero, dst) {
            out.entry(e.header.ifindex).or_default().insert(dst);
        }
    }
    Ok(out)
}

fn entry(ifindex: u32, dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(ZERO_MAC.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)),
    ];
    m
}

async fn add(handle: &Handle, ifindex: u32, device: &str, dst: Ipv4Addr) -> Result<(), SdnError> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(entry(ifindex, dst)));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    let fail = || nl("add an FDB entry to", device.to_string());
    let mut responses = handle.clone().request(req).map_err(fail())?;
    while let Some(msg) = responses.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            if e.code.is_some() {
                return Err(fail()(rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    Ok(())
}

/// Makes the all-zero entries of each network's VXLAN device (index in `vxlans`, by VNI)
/// its peers.
pub(crate) async fn reconcile(
    handle: &Handle,
    desired: &HostNetworks,
    vxlans: &BTreeMap<u32, u32>,
    changes: &mut Vec<String>,
) -> Result<(), SdnError> {
    let current = dump(handle).await?;
    for net in &desired.networks {
        let Some(&ifindex) = vxlans.get(&net.vni) else {
            continue;
        };
        let device = vxlan_name(net.vni);
        let want: BTreeSet<Ipv4Addr> = net.peers.iter().copied().collect();
        let have = current.get(&ifindex).cloned().unwrap_or_default();
        for dst in want.difference(&have) {
            add(handle, ifindex, &device, *dst).await?;
            changes.push(format!(
                "FDB entry 00:00:00:00:00:00 dst {dst} on {device} was missing: added"
            ));
        }
        for dst in have.difference(&want) {
            handle
                .neighbours()
                .del(entry(ifindex, *dst))
                .execute()
                .await
                .map_err(nl("delete an FDB entry of", device.clone()))?;
            changes.push(format!(
                "removed FDB entry 00:00:00:00:00:00 dst {dst} from {device}: not a peer"
            ));
        }
    }
    Ok(())
}
