//! Board profiles: what each supported board's CPU is expected to offer.

/// The boards `deploy --board` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardKind {
    /// Raspberry Pi 4: Cortex-A72, NEON, no fp16 arithmetic, no dot product.
    Pi4,
    /// Raspberry Pi 5: Cortex-A76, fp16 arithmetic and dot product.
    Pi5,
    /// NVIDIA Jetson Orin (CPU side): Cortex-A78AE, fp16 arithmetic and dot product.
    JetsonOrin,
}

pub struct Board {
    pub name: &'static str,
    pub cpu: &'static str,
    /// The qemu-aarch64 CPU model closest to the board (`--runner qemu`).
    pub qemu_cpu: &'static str,
    /// `/proc/cpuinfo` `Features` flags the profile expects.
    pub features: &'static [&'static str],
    /// What `device bench` can compute in on this CPU.
    pub precisions: &'static str,
}

/// What the `/proc/cpuinfo` flags mean, for messages.
pub fn feature_meaning(flag: &str) -> &'static str {
    match flag {
        "asimd" => "NEON",
        "asimdhp" => "fp16 arithmetic",
        "asimddp" => "int8 dot product",
        _ => "",
    }
}

impl Board {
    /// An Armv8.2 board (Cortex-A76, A78AE): NEON with fp16 arithmetic and the int8 dot product.
    const fn armv8_2(name: &'static str, cpu: &'static str, qemu_cpu: &'static str) -> Board {
        Board { name, cpu, qemu_cpu, features: &["asimd", "asimdhp", "asimddp"], precisions: "int8 (dot product), fp16 or fp32" }
    }
}

impl BoardKind {
    pub fn profile(self) -> Board {
        match self {
            BoardKind::Pi4 => Board {
                name: "pi4",
                cpu: "Cortex-A72",
                qemu_cpu: "cortex-a72",
                features: &["asimd"],
                precisions: "int8 or fp32 (no fp16 arithmetic)",
            },
            BoardKind::Pi5 => Board::armv8_2("pi5", "Cortex-A76", "cortex-a76"),
            // qemu 7.2 has no A78AE; Neoverse-N1 is the same Armv8.2 feature set.
            BoardKind::JetsonOrin => Board::armv8_2("jetson-orin", "Cortex-A78AE", "neoverse-n1"),
        }
    }
}

/// The flags of the first `Features` line of an aarch64 `/proc/cpuinfo`; `None` when there is
/// none (another architecture, or a kernel that hides it).
pub fn cpuinfo_features(cpuinfo: &str) -> Option<Vec<String>> {
    let line = cpuinfo.lines().find(|l| l.split(':').next().is_some_and(|k| k.trim().eq_ignore_ascii_case("features")))?;
    let (_, flags) = line.split_once(':')?;
    Some(flags.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_features() {
        // The `Features` lines of a Pi 5 and a Pi 4: each has what its profile expects.
        let pi5 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n";
        let pi4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n";
        for (cpuinfo, board) in [(pi5, BoardKind::Pi5), (pi4, BoardKind::Pi4)] {
            let have = cpuinfo_features(cpuinfo).unwrap();
            assert!(board.profile().features.iter().all(|f| have.iter().any(|h| h == f)), "{board:?}: {have:?}");
        }
        assert!(!cpuinfo_features(pi4).unwrap().iter().any(|f| f == "asimddp"));
        // x86 says `flags`: no aarch64 features to check.
        assert_eq!(cpuinfo_features("processor\t: 0\nflags\t\t: fpu vme\n"), None);
    }
}
