//! The hypervisor a machine runs under: KVM only when a bounded probe shows a KVM guest really
//! boots on this host, else TCG; the probe's answer is kept per boot in the images folder.

use std::path::Path;
use std::time::Duration;

use crate::LibvirtProvider;

/// The hypervisor to use: `ENVRIG_ACCEL` (`kvm`, `tcg`) when set, else KVM only when a
/// bounded probe shows that a KVM guest really boots: QEMU starts `kernel` under KVM and
/// must print `Linux version` on its serial port within 4 s. (On some hosts KVM runs real
/// mode and then hangs in the kernel, so a smaller probe would lie.) Without a kernel to
/// try, TCG.
fn choose_accel(kernel: Option<&Path>) -> &'static str {
    match std::env::var("ENVRIG_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "qemu",
        _ => {}
    }
    let Some(kernel) = kernel else { return "qemu" };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "qemu";
    }
    // The probe must not outlive envrig: killed while it waits (a SIGKILL, Ctrl-C twice),
    // envrig would leave a QEMU spinning in a hung KVM guest for good. `setpriv
    // --pdeathsig KILL` (util-linux) makes the kernel kill it with its parent.
    let qemu_args = |c: &mut std::process::Command| {
        c.args([
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=serial panic=-1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    };
    let mut guarded = std::process::Command::new("setpriv");
    guarded.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
    qemu_args(&mut guarded);
    let child = match guarded.spawn() {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut plain = std::process::Command::new("qemu-system-x86_64");
            qemu_args(&mut plain);
            plain.spawn()
        }
        Err(e) => Err(e),
    };
    let Ok(mut child) = child else { return "qemu" };
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(13).any(|w| w == b"Linux version") {
                    let _ = tx.send(true);
                    return;
                }
                if seen.len() > 1 << 20 {
                    break;
                }
            }
            let _ = tx.send(false);
        });
    }
    let works = matches!(rx.recv_timeout(Duration::from_secs(4)), Ok(true));
    let _ = child.kill();
    let _ = child.wait();
    if works { "kvm" } else { "qemu" }
}

impl LibvirtProvider {
    /// [`choose_accel`], remembered per boot and kernel (by size) in the images folder: the probe can
    /// take 4 s where KVM hangs, and its answer does not change until the host reboots.
    pub(crate) fn cached_accel(&self, kernel: Option<&Path>) -> &'static str {
        if std::env::var_os("ENVRIG_ACCEL").is_some() {
            return choose_accel(kernel);
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let key = format!(
            "{} {}",
            boot.trim(),
            kernel
                .and_then(|k| std::fs::metadata(k).ok())
                .map(|m| m.len().to_string())
                .unwrap_or_default()
        );
        let file = self.images.join(".accel");
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some((k, v)) = text.rsplit_once(' ')
            && k == key
        {
            return if v.trim() == "kvm" { "kvm" } else { "qemu" };
        }
        let chosen = choose_accel(kernel);
        let _ = std::fs::create_dir_all(&self.images);
        let _ = std::fs::write(&file, format!("{key} {chosen}"));
        chosen
    }
}
