//! The compact syntax of a security-group rule on the command line and in `secgroups show`:
//! `DIRECTION:PROTOCOL:PORTS:REMOTE`, e.g. `in:tcp:22:0.0.0.0/0`,
//! `in:tcp:8000-8080:group=web`, `out:any::0.0.0.0/0`. Pure text ↔ [`SecRule`]: the
//! writer's output always reads back to the same rule, and the reader refuses what the
//! appliance would refuse, naming the part that is wrong.

use cosm_wire::{Direction, Protocol, Remote, SecGroupName, SecRule};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// What `--help` says about the syntax (kept next to the code that reads it).
pub(crate) const SYNTAX_HELP: &str = "\
A rule is DIRECTION:PROTOCOL:PORTS:REMOTE, four parts separated by ':'
  DIRECTION  in (traffic to the port) or out (traffic from it)
  PROTOCOL   tcp, udp, icmp or any
  PORTS      tcp and udp only: one port (22) or a range (8000-8080); empty for all ports
  REMOTE     who is on the other side: an IPv4 CIDR (0.0.0.0/0, 10.0.0.0/8, 192.0.2.7/32)
             or group=NAME (the ports of that security group)
A group's rules only allow; whatever no rule allows is dropped (replies to allowed
connections pass). Examples:
  in:tcp:22:0.0.0.0/0         ssh from anywhere
  in:tcp:8000-8080:group=web  ports 8000 to 8080 from the ports of group web
  in:icmp::10.0.0.0/8         ping and other ICMP from 10/8
  out:any::0.0.0.0/0          anything outwards";

/// Reads one rule. The error names the part that is wrong; callers add which rule it was
/// (clap does: `invalid value '…' for '--rule <SPEC>'`).
pub(crate) fn parse_rule(spec: &str) -> Result<SecRule, String> {
    let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
    let [direction, protocol, ports, remote] = parts[..] else {
        return Err(format!(
            "a rule is DIRECTION:PROTOCOL:PORTS:REMOTE, 4 parts separated by ':' \
             (e.g. in:tcp:22:0.0.0.0/0, or out:any::0.0.0.0/0 with empty PORTS), not {}",
            parts.len()
        ));
    };
    let direction = match direction.to_ascii_lowercase().as_str() {
        "in" | "ingress" => Direction::Ingress,
        "out" | "egress" => Direction::Egress,
        _ => return Err(format!("the direction {direction:?} is neither in nor out")),
    };
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "any" => Protocol::Any,
        _ => {
            return Err(format!(
                "the protocol {protocol:?} is not one of tcp, udp, icmp, any"
            ))
        }
    };
    let ports = parse_ports(ports, protocol)?;
    let remote = parse_remote(remote)?;
    Ok(SecRule {
        direction,
        protocol,
        ports,
        remote,
    })
}

fn parse_ports(text: &str, protocol: Protocol) -> Result<Option<(u16, u16)>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if matches!(protocol, Protocol::Icmp | Protocol::Any) {
        return Err(format!(
            "the ports {text:?} go only with tcp or udp: leave PORTS empty for {} (e.g. in:{}::0.0.0.0/0)",
            protocol_name(protocol),
            protocol_name(protocol)
        ));
    }
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "the ports {text:?} are not a port (22) or a range (8000-8080) of ports 1-65535; \
                 leave PORTS empty for all ports"
            )),
        }
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("the ports {text:?} run backwards: write {hi}-{lo}"));
    }
    Ok(Some((lo, hi)))
}

fn parse_remote(text: &str) -> Result<Remote, String> {
    if text.is_empty() {
        return Err(
            "the remote is missing: an IPv4 CIDR (0.0.0.0/0 for anyone) or group=NAME".to_string(),
        );
    }
    if let Some(name) = text.strip_prefix("group=") {
        return SecGroupName::new(name)
            .map(Remote::Group)
            .map_err(|e| format!("the remote {text:?}: {e}"));
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Err(format!(
            "the remote {text:?} has no prefix: write {ip}/32 for this one address"
        ));
    }
    let net: Ipv4Net = text.parse().map_err(|_| {
        format!("the remote {text:?} is neither an IPv4 CIDR like 10.0.0.0/8 nor group=NAME")
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "the remote {text:?} is not a network address: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(Remote::Cidr(net))
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "any",
    }
}

/// Writes a rule in the syntax [`parse_rule`] reads.
pub(crate) fn format_rule(r: &SecRule) -> String {
    let direction = match r.direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let ports = match r.ports {
        None => String::new(),
        Some((lo, hi)) if lo == hi => lo.to_string(),
        Some((lo, hi)) => format!("{lo}-{hi}"),
    };
    let remote = match &r.remote {
        Remote::Cidr(net) => net.to_string(),
        Remote::Group(g) => format!("group={g}"),
    };
    format!("{direction}:{}:{ports}:{remote}", protocol_name(r.protocol))
}

/// Checks a rule that did not come through [`parse_rule`] (one from a JSON file) by the
/// same checks: written out and read back, it must be itself.
pub(crate) fn check_rule(r: &SecRule) -> Result<(), String> {
    let back = parse_rule(&format_rule(r))?;
    if &back != r {
        // Unreachable while format_rule and parse_rule agree; the round-trip test keeps them so.
        return Err(format!("{} does not read back as itself", format_rule(r)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Remote {
        Remote::Cidr(s.parse().unwrap())
    }

    #[test]
    fn reads_the_documented_examples() {
        assert_eq!(
            parse_rule("in:tcp:22:0.0.0.0/0"),
            Ok(SecRule {
                direction: Direction::Ingress,
                protocol: Protocol::Tcp,
                ports: Some((22, 22)),
                remote: cidr("0.0.0.0/0"),
            })
        );
        assert_eq!(
            parse_rule("in:tcp:8000-8080:group=web"),
            Ok(SecRule {
                direction: Direction::Ingress,
                protocol: Protocol::Tcp,
                ports: Some((8000, 8080)),
                remote: Remote::Group("web".parse().unwrap()),
            })
        );
        assert_eq!(
            parse_rule("out:any::0.0.0.0/0"),
            Ok(SecRule {
                direction: Direction::Egress,
                protocol: Protocol::Any,
                ports: None,
                remote: cidr("0.0.0.0/0"),
            })
        );
        let icmp = parse_rule("in:icmp::10.0.0.0/8").unwrap();
        assert_eq!((icmp.protocol, icmp.ports), (Protocol::Icmp, None));
        // Long direction names, upper case and blanks around parts are read too.
        assert_eq!(
            parse_rule("Ingress : UDP : 53 : 192.0.2.7/32"),
            Ok(SecRule {
                direction: Direction::Ingress,
                protocol: Protocol::Udp,
                ports: Some((53, 53)),
                remote: cidr("192.0.2.7/32"),
            })
        );
        // Every example in the help text is a valid rule.
        let examples: Vec<&str> = SYNTAX_HELP
            .lines()
            .skip_while(|l| !l.ends_with("Examples:"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(examples.len(), 4);
        for e in examples {
            assert!(parse_rule(e).is_ok(), "{e}");
        }
    }

    #[test]
    fn bad_rules_name_the_part_that_is_wrong() {
        for (spec, want) in [
            ("in:tcp:22", "4 parts"),
            ("in:tcp:22:0.0.0.0/0:x", "not 5"),
            ("", "not 1"),
            ("up:tcp:22:0.0.0.0/0", "the direction \"up\""),
            ("in:sctp:22:0.0.0.0/0", "the protocol \"sctp\""),
            ("in:tcp:0:0.0.0.0/0", "the ports \"0\""),
            ("in:tcp:99999:0.0.0.0/0", "the ports \"99999\""),
            ("in:tcp:ssh:0.0.0.0/0", "the ports \"ssh\""),
            ("in:tcp:22-:0.0.0.0/0", "the ports \"22-\""),
            ("in:tcp:8080-8000:0.0.0.0/0", "write 8000-8080"),
            ("in:icmp:8:0.0.0.0/0", "only with tcp or udp"),
            ("out:any:1-2:0.0.0.0/0", "leave PORTS empty for any"),
            ("in:tcp:22:", "the remote is missing"),
            ("in:tcp:22:10.0.0.5", "write 10.0.0.5/32"),
            ("in:tcp:22:10.0.0.5/8", "did you mean 10.0.0.0/8?"),
            ("in:tcp:22:10.0.0.0/33", "the remote \"10.0.0.0/33\""),
            ("in:tcp:22:web", "group=NAME"),
            ("in:tcp:22:group=", "the remote \"group=\""),
            ("in:tcp:22:group=a b", "the remote \"group=a b\""),
        ] {
            let err = parse_rule(spec).unwrap_err();
            assert!(err.contains(want), "{spec:?}: {err}");
        }
    }

    #[test]
    fn written_rules_read_back_as_themselves() {
        for spec in [
            "in:tcp:22:0.0.0.0/0",
            "in:tcp:8000-8080:group=web",
            "out:any::0.0.0.0/0",
            "in:icmp::10.0.0.0/8",
            "out:udp:53:192.0.2.7/32",
            "in:udp::group=dns-servers",
            "in:tcp:1-65535:198.51.100.0/24",
        ] {
            let rule = parse_rule(spec).unwrap();
            assert_eq!(format_rule(&rule), spec);
            assert_eq!(parse_rule(&format_rule(&rule)), Ok(rule.clone()));
            assert_eq!(check_rule(&rule), Ok(()));
        }
        // Other spellings are written the one way.
        let r = parse_rule("egress:TCP:443-443:10.0.0.0/8").unwrap();
        assert_eq!(format_rule(&r), "out:tcp:443:10.0.0.0/8");
    }

    #[test]
    fn rules_from_elsewhere_get_the_same_checks() {
        let rule = |protocol, ports, remote: &str| SecRule {
            direction: Direction::Ingress,
            protocol,
            ports,
            remote: cidr(remote),
        };
        assert!(check_rule(&rule(Protocol::Icmp, Some((1, 1)), "0.0.0.0/0"))
            .unwrap_err()
            .contains("only with tcp or udp"));
        assert!(check_rule(&rule(Protocol::Tcp, Some((0, 10)), "0.0.0.0/0")).is_err());
        assert!(check_rule(&rule(Protocol::Tcp, Some((9, 8)), "0.0.0.0/0")).is_err());
        assert!(check_rule(&rule(Protocol::Tcp, None, "10.1.2.3/8"))
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8?"));
    }
}
