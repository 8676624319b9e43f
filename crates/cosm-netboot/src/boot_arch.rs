//! Which firmware is asking: DHCP option 93 (client system architecture, RFC 4578 and the
//! IANA "Processor Architecture Types" registry) and the vendor class (option 60).

/// The firmware kinds COSM answers differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientArch {
    /// Legacy BIOS PXE (type 0).
    BiosX86,
    /// UEFI x86-64 PXE (types 7 and 9).
    UefiX64,
    /// UEFI x86-64 HTTP Boot (type 16).
    UefiX64Http,
    /// UEFI ARM64 PXE (type 11).
    UefiArm64,
    /// UEFI ARM64 HTTP Boot (type 19).
    UefiArm64Http,
    /// Anything else, with its type number.
    Other(u16),
}

impl ClientArch {
    /// From the option 93 value. A client without option 93 is treated as BIOS, which is
    /// what old PXE ROMs that omit it are.
    pub fn from_option93(value: Option<u16>) -> ClientArch {
        match value {
            None | Some(0) => ClientArch::BiosX86,
            Some(7) | Some(9) => ClientArch::UefiX64,
            Some(16) => ClientArch::UefiX64Http,
            Some(11) => ClientArch::UefiArm64,
            Some(19) => ClientArch::UefiArm64Http,
            Some(n) => ClientArch::Other(n),
        }
    }

    /// From a vendor class such as `PXEClient:Arch:00007:UNDI:003016` or
    /// `HTTPClient:Arch:00016`, for clients whose option 93 is missing.
    pub fn from_vendor_class(class: &str) -> Option<ClientArch> {
        let rest = class
            .strip_prefix("PXEClient:Arch:")
            .or_else(|| class.strip_prefix("HTTPClient:Arch:"))?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits
            .parse()
            .ok()
            .map(|n| ClientArch::from_option93(Some(n)))
    }

    pub fn is_uefi(self) -> bool {
        !matches!(self, ClientArch::BiosX86 | ClientArch::Other(_))
    }

    pub fn is_http_boot(self) -> bool {
        matches!(self, ClientArch::UefiX64Http | ClientArch::UefiArm64Http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option93_values_seen_on_real_firmware() {
        // SeaBIOS + iPXE sends 0; OVMF sends 7; OVMF HTTP Boot sends 16.
        assert_eq!(ClientArch::from_option93(Some(0)), ClientArch::BiosX86);
        assert_eq!(ClientArch::from_option93(Some(7)), ClientArch::UefiX64);
        assert_eq!(ClientArch::from_option93(Some(9)), ClientArch::UefiX64);
        assert_eq!(ClientArch::from_option93(Some(16)), ClientArch::UefiX64Http);
        assert_eq!(ClientArch::from_option93(None), ClientArch::BiosX86);
        assert_eq!(ClientArch::from_option93(Some(6)), ClientArch::Other(6));
    }

    #[test]
    fn vendor_class_parsing() {
        assert_eq!(
            ClientArch::from_vendor_class("PXEClient:Arch:00007:UNDI:003016"),
            Some(ClientArch::UefiX64)
        );
        assert_eq!(
            ClientArch::from_vendor_class("HTTPClient:Arch:00016"),
            Some(ClientArch::UefiX64Http)
        );
        assert_eq!(ClientArch::from_vendor_class("MSFT 5.0"), None);
        assert!(ClientArch::UefiX64Http.is_http_boot() && ClientArch::UefiX64Http.is_uefi());
        assert!(!ClientArch::BiosX86.is_uefi());
    }
}
