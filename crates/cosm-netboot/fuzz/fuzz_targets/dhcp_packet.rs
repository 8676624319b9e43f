//! Fuzzes the DHCP packet path: parse, decide (authoritative and proxy), encode the reply.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cosm_netboot::dhcp::robustness::packet_path(data);
});
