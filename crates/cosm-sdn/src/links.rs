//! Bridges, VXLAN devices and port enslavement, through rtnetlink.
//!
//! Only devices named `cbr*`, `cvx*` and `cp*` are changed; a desired port whose device does
//! not exist yet (its VM has not started) is skipped without error.

use crate::{SdnError, Underlay};
use cosm_wire::{bridge_name, port_device, vxlan_name, HostNetwork, HostNetworks};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};
use std::collections::{BTreeMap, BTreeSet};

/// The IANA VXLAN port.
pub(crate) const VXLAN_PORT: u16 = 4789;

/// A link as the kernel dumps it, reduced to what the reconcile looks at.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    controller: Option<u32>,
    mtu: u32,
    up: bool,
    vxlan: Vec<InfoVxlan>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            controller: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            vxlan: Vec::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = v.clone(),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Why this VXLAN device is not the one network `vni` needs, if it is not.
    fn vxlan_mismatch(&self, vni: u32, underlay: &Underlay, dev: Option<u32>) -> Option<String> {
        if self.kind != Some(InfoKind::Vxlan) {
            return Some("it is not a VXLAN device".into());
        }
        let mut id = None;
        let mut local = None;
        let mut link = None;
        let mut port = None;
        let mut learning = None;
        for v in &self.vxlan {
            match v {
                InfoVxlan::Id(x) => id = Some(*x),
                InfoVxlan::Local(x) => local = Some(*x),
                InfoVxlan::Link(x) => link = Some(*x),
                InfoVxlan::Port(x) => port = Some(*x),
                InfoVxlan::Learning(x) => learning = Some(*x),
                _ => {}
            }
        }
        if id != Some(vni) {
            return Some(format!("its VNI is {id:?}, not {vni}"));
        }
        if local != Some(underlay.vtep) {
            return Some(format!(
                "its local address is {local:?}, not {}",
                underlay.vtep
            ));
        }
        if dev.is_some() && link != dev {
            return Some("it rides on another device than the underlay".into());
        }
        if port != Some(VXLAN_PORT) {
            return Some(format!("its port is {port:?}, not {VXLAN_PORT}"));
        }
        if learning != Some(true) {
            return Some("MAC learning is off".into());
        }
        None
    }
}

/// Whether `name` is one of ours: a prefix and the rest.
fn ours(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn nl(action: &'static str, device: &str) -> impl FnOnce(rtnetlink::Error) -> SdnError {
    let device = device.to_string();
    move |source| SdnError::Netlink {
        action,
        device,
        source,
    }
}

async fn dump(handle: &Handle) -> Result<BTreeMap<String, Link>, SdnError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list", "links"))?;
    Ok(messages
        .iter()
        .map(Link::from_message)
        .map(|l| (l.name.clone(), l))
        .collect())
}

async fn get(handle: &Handle, name: &str) -> Result<Link, SdnError> {
    let m = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl("look up", name))?;
    m.map(|m| Link::from_message(&m))
        .ok_or_else(|| SdnError::Netlink {
            action: "find",
            device: name.to_string(),
            source: rtnetlink::Error::RequestFailed,
        })
}

async fn delete(handle: &Handle, link: &Link) -> Result<(), SdnError> {
    handle
        .link()
        .del(link.index)
        .execute()
        .await
        .map_err(nl("delete", &link.name))
}

async fn set(
    handle: &Handle,
    link: &Link,
    action: &'static str,
    msg: LinkMessage,
) -> Result<(), SdnError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(nl(action, &link.name))
}

/// Makes the links match `desired`; returns the index of each network's VXLAN device.
pub(crate) async fn reconcile(
    handle: &Handle,
    underlay: &Underlay,
    desired: &HostNetworks,
    changes: &mut Vec<String>,
) -> Result<BTreeMap<u32, u32>, SdnError> {
    let links = dump(handle).await?;
    let dev = match &underlay.dev {
        None => None,
        Some(name) => Some(
            links
                .get(name)
                .ok_or_else(|| SdnError::NoUnderlay { dev: name.clone() })?
                .index,
        ),
    };

    let wanted: BTreeSet<String> = desired
        .networks
        .iter()
        .flat_map(|n| [bridge_name(n.vni), vxlan_name(n.vni)])
        .collect();
    for link in links.values() {
        if (ours(&link.name, "cbr") || ours(&link.name, "cvx")) && !wanted.contains(&link.name) {
            delete(handle, link).await?;
            changes.push(format!(
                "removed {} (its network is no longer on this host)",
                link.name
            ));
        }
    }

    let mut vxlans = BTreeMap::new();
    let mut bridges = BTreeMap::new();
    let mut networks: Vec<&HostNetwork> = desired.networks.iter().collect();
    networks.sort_by_key(|n| n.vni);
    for net in networks {
        let br = ensure_bridge(handle, &links, net, changes).await?;
        let vx = ensure_vxlan(handle, &links, net, underlay, dev, br, changes).await?;
        vxlans.insert(net.vni, vx);
        bridges.insert(br, net.vni);
        for port in desired.ports.iter().filter(|p| p.vni == net.vni) {
            let Some(link) = links.get(&port.device) else {
                // Its VM has not started yet.
                continue;
            };
            attach(handle, link, &bridge_name(net.vni), br, net.mtu, changes).await?;
        }
        // Enslaving can move an automatic bridge MTU: check it last.
        let bridge = get(handle, &bridge_name(net.vni)).await?;
        settle(handle, &bridge, u32::from(net.mtu), changes).await?;
    }

    // A `cp*` device in one of our bridges that is no desired port on this host (a desired
    // port in the wrong bridge was moved above).
    let desired_ports: BTreeSet<String> =
        desired.ports.iter().map(|p| port_device(&p.mac)).collect();
    for link in links
        .values()
        .filter(|l| ours(&l.name, "cp") && !desired_ports.contains(&l.name))
    {
        if let Some(vni) = link.controller.and_then(|c| bridges.get(&c)) {
            set(
                handle,
                link,
                "release",
                LinkUnspec::new_with_index(link.index)
                    .nocontroller()
                    .build(),
            )
            .await?;
            changes.push(format!(
                "released {} from {} (not a port on this host)",
                link.name,
                bridge_name(*vni)
            ));
        }
    }
    Ok(vxlans)
}

async fn ensure_bridge(
    handle: &Handle,
    links: &BTreeMap<String, Link>,
    net: &HostNetwork,
    changes: &mut Vec<String>,
) -> Result<u32, SdnError> {
    let name = bridge_name(net.vni);
    if let Some(link) = links.get(&name) {
        if link.kind == Some(InfoKind::Bridge) {
            return Ok(link.index);
        }
        delete(handle, link).await?;
        changes.push(format!("deleted {name}: it was not a bridge"));
    }
    handle
        .link()
        .add(LinkBridge::new(&name).mtu(u32::from(net.mtu)).up().build())
        .execute()
        .await
        .map_err(nl("create bridge", &name))?;
    changes.push(format!("created bridge {name}"));
    Ok(get(handle, &name).await?.index)
}

#[allow(clippy::too_many_arguments)]
async fn ensure_vxlan(
    handle: &Handle,
    links: &BTreeMap<String, Link>,
    net: &HostNetwork,
    underlay: &Underlay,
    dev: Option<u32>,
    bridge: u32,
    changes: &mut Vec<String>,
) -> Result<u32, SdnError> {
    let name = vxlan_name(net.vni);
    if let Some(link) = links.get(&name) {
        match link.vxlan_mismatch(net.vni, underlay, dev) {
            None => {
                attach(
                    handle,
                    link,
                    &bridge_name(net.vni),
                    bridge,
                    net.mtu,
                    changes,
                )
                .await?;
                return Ok(link.index);
            }
            Some(why) => {
                delete(handle, link).await?;
                changes.push(format!("deleted {name}: {why}"));
            }
        }
    }
    let mut builder = LinkVxlan::new(&name, net.vni)
        .local(underlay.vtep)
        .port(VXLAN_PORT)
        .learning(true);
    if let Some(dev) = dev {
        builder = builder.dev(dev);
    }
    handle
        .link()
        .add(
            builder
                .mtu(u32::from(net.mtu))
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl("create VXLAN device", &name))?;
    changes.push(format!(
        "created VXLAN {name} (VNI {}, local {}) in {}",
        net.vni,
        underlay.vtep,
        bridge_name(net.vni)
    ));
    Ok(get(handle, &name).await?.index)
}

/// Puts `link` in `bridge` with the network's MTU, up.
async fn attach(
    handle: &Handle,
    link: &Link,
    bridge_name: &str,
    bridge: u32,
    mtu: u16,
    changes: &mut Vec<String>,
) -> Result<(), SdnError> {
    if link.controller != Some(bridge) {
        set(
            handle,
            link,
            "enslave",
            LinkUnspec::new_with_index(link.index)
                .controller(bridge)
                .build(),
        )
        .await?;
        changes.push(match link.controller {
            None => format!("enslaved {} to {bridge_name}", link.name),
            Some(_) => format!(
                "repaired: {} was in another bridge, moved to {bridge_name}",
                link.name
            ),
        });
    }
    settle(handle, link, u32::from(mtu), changes).await
}

/// Sets `link`'s MTU and brings it up, where needed.
async fn settle(
    handle: &Handle,
    link: &Link,
    mtu: u32,
    changes: &mut Vec<String>,
) -> Result<(), SdnError> {
    if link.mtu != mtu {
        set(
            handle,
            link,
            "set the MTU of",
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
        )
        .await?;
        changes.push(format!(
            "set the MTU of {} to {mtu} (was {})",
            link.name, link.mtu
        ));
    }
    if !link.up {
        set(
            handle,
            link,
            "bring up",
            LinkUnspec::new_with_index(link.index).up().build(),
        )
        .await?;
        changes.push(format!("brought {} up", link.name));
    }
    Ok(())
}
