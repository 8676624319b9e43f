//! iPXE scripts: what a machine boots next, as a script its firmware's iPXE runs.
//!
//! Pure text generation; the appliance decides the [`Target`] from the machine's state.
//! Every download is tried `retries` times; when a step still fails, the script fetches
//! `<report>&step=<step>` so the appliance records where the boot stopped, then exits to
//! the firmware (which moves on to its next boot option).

use cosm_wire::MacAddr;
use std::fmt::Write;

/// Firmware family, from the script URL's `arch=` (what DHCP saw in option 93).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn parse(s: &str) -> Option<Firmware> {
        match s {
            "bios" | "pcbios" => Some(Firmware::Bios),
            "uefi" | "efi" => Some(Firmware::Uefi),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// What the script boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A kernel and initrd over HTTP, e.g. the agent ramdisk or an installer.
    Linux {
        /// Shown on the console and in the script's comment, e.g. "agent ramdisk".
        label: String,
        kernel_url: String,
        initrd_url: String,
        /// The initrd's image name; UEFI kernels find it through `initrd=<name>`.
        initrd_name: String,
        args: String,
    },
    /// The machine's own disk: `sanboot` of the first BIOS drive, or back to the UEFI
    /// boot manager, which goes on to the next boot option.
    LocalDisk,
    /// Nothing to boot (e.g. a fenced machine): say why and power off.
    PowerOff { reason: String },
}

/// Everything a script is rendered from.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    pub mac: MacAddr,
    pub firmware: Firmware,
    /// e.g. "discovered", shown on the console.
    pub state: &'a str,
    /// Base of the failure report URL; the script appends `&step=<step>`.
    pub report_url: String,
    pub retries: u32,
    pub target: Target,
}

/// Characters iPXE would take as syntax in a command word: whitespace, `$` (settings
/// expansion) and `#`. URLs and kernel arguments from the appliance's own config must not
/// carry them.
pub fn is_safe_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '$' || c == '#')
}

impl Script<'_> {
    pub fn render(&self) -> String {
        let mut s = String::from("#!ipxe\n");
        let who = format!("{} ({}, {})", self.mac, self.state, self.firmware.as_str());
        let retries = self.retries.max(1);
        match &self.target {
            Target::Linux {
                label,
                kernel_url,
                initrd_url,
                initrd_name,
                args,
            } => {
                let _ = writeln!(s, "# COSM: {who} boots the {label}");
                let _ = writeln!(s, "echo COSM: {who}: booting the {label}");
                // UEFI kernels load their initrd by name from iPXE's image list.
                let initrd_arg = match self.firmware {
                    Firmware::Uefi => format!(" initrd={initrd_name}"),
                    Firmware::Bios => String::new(),
                };
                let kernel = format!("kernel {kernel_url}{initrd_arg} {args}");
                let initrd = format!("initrd --name {initrd_name} {initrd_url}");
                retry(&mut s, "kernel", &kernel, "initrd", retries);
                retry(&mut s, "initrd", &initrd, "boot", retries);
                s.push_str(":boot\n");
                s.push_str("boot || goto failed_boot\n");
            }
            Target::LocalDisk => {
                let _ = writeln!(s, "# COSM: {who} boots from its local disk");
                let _ = writeln!(s, "echo COSM: {who}: booting from the local disk");
                match self.firmware {
                    Firmware::Bios => {
                        s.push_str("sanboot --no-describe --drive 0x80 || goto failed_boot\n")
                    }
                    // Back to the firmware's boot manager with a failure status, so that it
                    // tries the next boot option (the disk). An image returning
                    // EFI_SUCCESS makes a UEFI boot manager stop and show its menu instead
                    // (UEFI 2.x, 3.1.1; OVMF opens its setup screen): `exit 0` would leave
                    // an installed machine there.
                    Firmware::Uefi => s.push_str("exit 1\n"),
                }
            }
            Target::PowerOff { reason } => {
                let _ = writeln!(s, "# COSM: {who} has nothing to boot: {reason}");
                let _ = writeln!(s, "echo COSM: {who}: {reason}; powering off");
                s.push_str("sleep 5\npoweroff || exit 1\n");
            }
        }
        s.push_str("goto end\n");
        for step in ["kernel", "initrd", "boot"] {
            let _ = writeln!(s, ":failed_{step}\nset cosm_step {step}\ngoto failed");
        }
        let _ = writeln!(
            s,
            ":failed\necho COSM: the ${{cosm_step}} step failed {retries} times; reporting it to the appliance and giving up\nimgfetch {}&step=${{cosm_step}} ||\nsleep 10\nexit 1\n:end",
            self.report_url
        );
        s
    }
}

/// `command` tried up to `retries` times; success jumps to `next`.
fn retry(s: &mut String, step: &str, command: &str, next: &str, retries: u32) {
    let _ = writeln!(s, ":{step}");
    for attempt in 1..=retries {
        let _ = writeln!(s, "{command} && goto {next} ||");
        if attempt < retries {
            let _ = writeln!(
                s,
                "echo COSM: {step} download failed (attempt {attempt} of {retries}); retrying\nsleep {}",
                attempt * 2
            );
        }
    }
    let _ = writeln!(s, "goto failed_{step}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(firmware: Firmware, target: Target) -> String {
        Script {
            mac: "52:54:00:12:34:56".parse().unwrap(),
            firmware,
            state: "discovered",
            report_url: "http://192.0.2.1:8080/boot/report?mac=52:54:00:12:34:56&arch=bios".into(),
            retries: 3,
            target,
        }
        .render()
    }

    fn ramdisk() -> Target {
        Target::Linux {
            label: "agent ramdisk".into(),
            kernel_url: "http://192.0.2.1:8080/boot/vmlinuz?mac=52:54:00:12:34:56&step=kernel"
                .into(),
            initrd_url:
                "http://192.0.2.1:8080/boot/initramfs.img?mac=52:54:00:12:34:56&step=initrd".into(),
            initrd_name: "initramfs.img".into(),
            args: "cosm.appliance=http://192.0.2.1:8080 console=ttyS0".into(),
        }
    }

    #[test]
    fn linux_retries_each_download_then_reports_the_step() {
        let s = script(Firmware::Bios, ramdisk());
        assert!(s.starts_with("#!ipxe\n"));
        assert_eq!(s.matches("kernel http://").count(), 3, "{s}");
        assert_eq!(s.matches("initrd --name initramfs.img http://").count(), 3);
        assert!(s.contains("goto failed_kernel\n") && s.contains("goto failed_initrd\n"));
        assert!(s.contains(
            "imgfetch http://192.0.2.1:8080/boot/report?mac=52:54:00:12:34:56&arch=bios&step=${cosm_step} ||"
        ));
        // BIOS iPXE hands every initrd to the kernel; no initrd= needed.
        assert!(!s.contains("initrd=initramfs.img"));
        // Every goto has its label.
        for line in s.lines() {
            if let Some(rest) = line.split("goto ").nth(1) {
                let label = rest.split_whitespace().next().unwrap();
                assert!(
                    s.contains(&format!("\n:{label}\n")),
                    "no label {label} in\n{s}"
                );
            }
        }
    }

    #[test]
    fn uefi_kernel_line_names_the_initrd() {
        let s = script(Firmware::Uefi, ramdisk());
        let kernel_line = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel_line.contains(" initrd=initramfs.img cosm.appliance="),
            "{kernel_line}"
        );
    }

    #[test]
    fn local_disk_differs_by_firmware() {
        let bios = script(Firmware::Bios, Target::LocalDisk);
        assert!(bios.contains("sanboot --no-describe --drive 0x80"));
        assert!(!bios.contains("kernel "));
        let uefi = script(Firmware::Uefi, Target::LocalDisk);
        assert!(uefi.contains("\nexit 1\n") && !uefi.contains("sanboot"));
    }

    #[test]
    fn unsafe_words_are_detected() {
        assert!(is_safe_word(
            "http://192.0.2.1/boot/vmlinuz?mac=x&step=kernel"
        ));
        assert!(!is_safe_word("a b"));
        assert!(!is_safe_word("${evil}"));
        assert!(!is_safe_word("x#y"));
        assert!(!is_safe_word(""));
    }
}
