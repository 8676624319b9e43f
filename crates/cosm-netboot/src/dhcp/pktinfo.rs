//! Which interface a request came in on, and replies sent out of that interface
//! (`IP_PKTINFO`, ip(7)).
//!
//! A client without an address is answered by broadcast. Left to the routing table, a
//! broadcast leaves through the interface of the default route (or fails with "Network
//! unreachable" when there is none), not the segment the client is on. When the server is
//! not bound to one interface (`dhcp.interface`), it learns the arrival interface of every
//! request and sends broadcast replies out of it.

use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd};

/// Asks the kernel to say, with each datagram, which interface it came in on.
pub(super) fn enable(sock: &impl AsFd) -> io::Result<()> {
    setsockopt(sock, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)
}

/// One datagram: its length, sender, and the interface index it came in on (when the
/// kernel said). Non-blocking: `WouldBlock` when there is none.
pub(super) fn recv(
    sock: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Option<u32>)> {
    let mut control = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let src = msg
        .address
        .map(SocketAddrV4::from)
        .ok_or_else(|| io::Error::other("a datagram without a sender address"))?;
    let mut ifindex = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                ifindex = u32::try_from(info.ipi_ifindex).ok().filter(|i| *i != 0);
            }
        }
    }
    Ok((msg.bytes, src, ifindex))
}

/// Sends `bytes` to `dest`, out of interface `ifindex` when given. Non-blocking.
pub(super) fn send(
    sock: &impl AsRawFd,
    bytes: &[u8],
    dest: SocketAddrV4,
    ifindex: Option<u32>,
) -> io::Result<usize> {
    let info = libc::in_pktinfo {
        ipi_ifindex: ifindex.unwrap_or(0) as libc::c_int,
        ipi_spec_dst: libc::in_addr { s_addr: 0 },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let pktinfo = [ControlMessage::Ipv4PacketInfo(&info)];
    let control: &[ControlMessage] = if ifindex.is_some() { &pktinfo } else { &[] };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        control,
        MsgFlags::MSG_DONTWAIT,
        Some(&SockaddrIn::from(dest)),
    )
    .map_err(io::Error::from)
}
