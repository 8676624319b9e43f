//! Fuzzes the TFTP request parser the server runs on every packet that reaches port 69.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(cosm_netboot::tftp::Request::Read(req) | cosm_netboot::tftp::Request::Write(req)) =
        cosm_netboot::tftp::parse_request(data)
    {
        // A parsed request came from the bytes: its name is in them.
        assert!(data.len() >= 2 + req.filename.len() + 1);
    }
});
