//! Identity newtypes: parsed once where they enter the system, never re-parsed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// Why an identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid MAC address {input:?}: expected six hex octets like 52:54:00:aa:bb:01")]
    Mac { input: String },
    #[error("invalid MAC prefix {input:?}: expected one to five hex octets like 52:54:00")]
    MacPrefix { input: String },
    #[error(
        "invalid role name {input:?}: use 1-32 characters, lowercase letters, digits and '-', starting with a letter"
    )]
    Role { input: String },
}

/// Parses `n` octets separated by `:` or `-` (case-insensitive), or written as plain hex.
fn parse_octets(s: &str, out: &mut [u8]) -> Option<usize> {
    let s = s.trim();
    // Only ASCII can be hex digits; refusing the rest first also keeps the byte slicing
    // below on character boundaries (a multi-byte character once panicked it).
    if !s.is_ascii() {
        return None;
    }
    let parts: Vec<&str> = if s.contains(':') {
        s.split(':').collect()
    } else if s.contains('-') {
        s.split('-').collect()
    } else if s.len().is_multiple_of(2) && !s.is_empty() {
        (0..s.len() / 2).map(|i| &s[2 * i..2 * i + 2]).collect()
    } else {
        return None;
    };
    if parts.is_empty() || parts.len() > out.len() {
        return None;
    }
    for (slot, part) in out.iter_mut().zip(&parts) {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    Some(parts.len())
}

/// An Ethernet MAC address; the key of every machine.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
    /// The address as a 48-bit integer: a compact, ordered store key.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = [0u8; 6];
        match parse_octets(s, &mut o) {
            Some(6) => Ok(MacAddr(o)),
            _ => Err(ParseError::Mac {
                input: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// The leading octets of a MAC address (an OUI is three), for rules that match a vendor.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MacPrefix {
    octets: [u8; 6],
    len: usize,
}

impl MacPrefix {
    pub fn matches(&self, mac: &MacAddr) -> bool {
        mac.0[..self.len] == self.octets[..self.len]
    }
}

impl FromStr for MacPrefix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = [0u8; 6];
        match parse_octets(s, &mut o[..5]) {
            Some(len) => Ok(MacPrefix { octets: o, len }),
            None => Err(ParseError::MacPrefix {
                input: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.octets[..self.len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacPrefix({self})")
    }
}

/// The name of a role (`center`, `web`, `host`, `storage`, or one an operator defined).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoleName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(RoleName(s.to_string()))
        } else {
            Err(ParseError::Role {
                input: s.to_string(),
            })
        }
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleName({})", self.0)
    }
}

/// Serde for the string-shaped identities: written with `Display`, read with `FromStr`.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(MacAddr);
string_serde!(MacPrefix);
string_serde!(RoleName);

/// OpenAPI schema for the string-shaped identities: a string with a pattern and example.
macro_rules! string_schema {
    ($t:ty, $name:literal, $pattern:literal, $example:literal, $desc:literal) => {
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .examples([serde_json::json!($example)])
                    .description(Some($desc))
                    .into()
            }
        }
        impl ToSchema for $t {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}
string_schema!(
    MacAddr,
    "MacAddr",
    "^[0-9a-fA-F]{2}([:-]?[0-9a-fA-F]{2}){5}$",
    "52:54:00:aa:bb:01",
    "An Ethernet MAC address."
);
string_schema!(
    MacPrefix,
    "MacPrefix",
    "^[0-9a-fA-F]{2}([:-]?[0-9a-fA-F]{2}){0,4}$",
    "52:54:00",
    "The leading one to five octets of a MAC address."
);
string_schema!(
    RoleName,
    "RoleName",
    "^[a-z][a-z0-9-]{0,31}$",
    "host",
    "A role name."
);

/// A machine's stable number, given by the appliance when the machine is first recorded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct MachineId(pub u64);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mac_accepts_common_spellings() {
        let want = MacAddr::new([0x52, 0x54, 0, 0xaa, 0xbb, 0x01]);
        for s in [
            "52:54:00:aa:bb:01",
            "52-54-00-AA-BB-01",
            "525400aabb01",
            " 52:54:00:AA:bb:01 ",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn mac_rejects_garbage() {
        for s in [
            "",
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:01:02",
            "zz:54:00:aa:bb:01",
            "5:54:00:aa:bb:01",
            "52:54-00:aa:bb:01",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }

    #[test]
    fn prefix_matches_only_its_octets() {
        let p: MacPrefix = "52:54:00".parse().unwrap();
        assert!(p.matches(&"52:54:00:12:34:56".parse().unwrap()));
        assert!(!p.matches(&"52:54:01:12:34:56".parse().unwrap()));
        assert!("52:54:00:12:34:56".parse::<MacPrefix>().is_err());
        assert_eq!(p.to_string(), "52:54:00");
    }

    #[test]
    fn role_names() {
        assert!("host".parse::<RoleName>().is_ok());
        assert!("gpu-host2".parse::<RoleName>().is_ok());
        for s in ["", "Host", "2host", "ho st", "h_st", &"a".repeat(33)] {
            assert!(s.parse::<RoleName>().is_err(), "{s}");
        }
    }

    #[test]
    fn mac_with_multibyte_characters_is_refused_not_a_panic() {
        for s in ["aéaaaaaaaaa", "é", "52:54:00:aa:bb:é", "ééééééé", "5é-54"] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
            assert!(s.parse::<MacPrefix>().is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn no_string_panics_the_identity_parsers(s in any::<String>()) {
            let _ = s.parse::<MacAddr>();
            let _ = s.parse::<MacPrefix>();
            let _ = s.parse::<RoleName>();
        }

        #[test]
        fn mac_display_parse_round_trip(o in any::<[u8; 6]>()) {
            let m = MacAddr::new(o);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
            prop_assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        }
    }
}
