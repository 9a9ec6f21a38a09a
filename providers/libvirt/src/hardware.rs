//! `[machines.NAME.libvirt]`'s hardware keys: `graphics` (a display), `video` (its card),
//! `cpu_mode` and `nested` (the guest's CPU), each checked, before anything is made,
//! against what this host's hypervisor says it offers (its domain capabilities), with the
//! way out named when it does not.

use envrig_provider_api::{MachineSpec, OptionValue, ProviderError, Result};

use crate::LibvirtProvider;
use crate::error::engine;
use crate::xml::{self, Cpu};

/// What a new domain shows and what CPU it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hardware {
    pub graphics: Option<&'static str>,
    pub video: String,
    pub cpu: Option<Cpu>,
}

/// What the host says of nested virtualisation and its CPU (read on this host only).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostCpu {
    /// `vmx` (Intel) or `svm` (AMD).
    pub virt_flag: Option<&'static str>,
    /// Whether KVM lets its guests run guests (`/sys/module/kvm_*/parameters/nested`).
    pub nested_enabled: Option<bool>,
}

impl HostCpu {
    fn read() -> HostCpu {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let virt_flag = if cpuinfo.contains("GenuineIntel") {
            Some("vmx")
        } else if cpuinfo.contains("AuthenticAMD") {
            Some("svm")
        } else {
            None
        };
        let nested_enabled = ["kvm_intel", "kvm_amd"].iter().find_map(|m| {
            std::fs::read_to_string(format!("/sys/module/{m}/parameters/nested"))
                .ok()
                .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
        });
        HostCpu {
            virt_flag,
            nested_enabled,
        }
    }
}

fn option<'a>(spec: &'a MachineSpec, key: &str) -> Option<&'a str> {
    match spec.options.get(key) {
        Some(OptionValue::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

impl LibvirtProvider {
    /// The hardware of `spec` under hypervisor `kind` (`qemu`: TCG, or `kvm`); the host's
    /// capabilities are asked only when a key needs them.
    pub(crate) async fn hardware(
        &self,
        spec: &MachineSpec,
        kind: &'static str,
    ) -> Result<Hardware> {
        let asks = option(spec, "graphics") == Some("spice")
            || option(spec, "video").is_some()
            || option(spec, "cpu_mode").is_some()
            || matches!(spec.options.get("nested"), Some(OptionValue::Bool(true)));
        let caps = if asks {
            self.blocking(move |c| {
                c.domain_capabilities(None, Some("x86_64"), None, Some(kind), 0)
                    .map_err(|e| engine("read the host's domain capabilities", e))
            })
            .await?
        } else {
            String::new()
        };
        let host = match self.remote {
            None => HostCpu::read(),
            Some(_) => HostCpu::default(),
        };
        choose(spec, kind, &caps, &host)
    }
}

/// [`LibvirtProvider::hardware`] given the host's domain capabilities (`caps`, empty when
/// no key needs them) and CPU.
pub(crate) fn choose(
    spec: &MachineSpec,
    kind: &str,
    caps: &str,
    host: &HostCpu,
) -> Result<Hardware> {
    let m = spec.machine.as_str();
    let refuse = |message: String| Err(ProviderError::Conflict { message });
    let graphics = match option(spec, "graphics") {
        Some("vnc") => Some("vnc"),
        Some("spice") => Some("spice"),
        _ => None,
    };
    if graphics == Some("spice") {
        let offered = xml::graphics_types(caps);
        if !offered.iter().any(|t| t == "spice") {
            return refuse(format!(
                "`graphics = \"spice\"` needs SPICE support, which this host's QEMU lacks (it \
                 offers: {}); use `graphics = \"vnc\"` in [machines.{m}.libvirt], or install \
                 QEMU's SPICE module (Debian: qemu-system-modules-spice)",
                offered.join(", ")
            ));
        }
    }
    let video = match option(spec, "video") {
        Some(v) if graphics.is_none() => {
            return refuse(format!(
                "`video = \"{v}\"` in [machines.{m}.libvirt] is the card of a display, and \
                 the machine has none: add `graphics = \"vnc\"` (or \"spice\")"
            ));
        }
        Some(v) => {
            let offered = xml::video_models(caps);
            if !offered.iter().any(|o| o == v) {
                return refuse(format!(
                    "`video = \"{v}\"` in [machines.{m}.libvirt]: this host's QEMU offers {}",
                    offered.join(", ")
                ));
            }
            v.to_string()
        }
        None => "cirrus".to_string(),
    };
    let nested = matches!(spec.options.get("nested"), Some(OptionValue::Bool(true)));
    let under = if kind == "kvm" {
        "KVM"
    } else {
        "TCG (software emulation)"
    };
    if nested && kind != "kvm" {
        return refuse(format!(
            "`nested = true` in [machines.{m}.libvirt] needs KVM, and this host runs guests \
             under {under}: a guest here cannot run guests of its own at any useful speed; \
             leave `nested` out, or use a host with /dev/kvm"
        ));
    }
    if nested && host.nested_enabled == Some(false) {
        return refuse(format!(
            "`nested = true` in [machines.{m}.libvirt]: this host's KVM does not let guests \
             run guests; turn it on (`modprobe -r kvm_intel && modprobe kvm_intel nested=1`, \
             kvm_amd on AMD) or leave `nested` out"
        ));
    }
    let mode = match option(spec, "cpu_mode") {
        Some(mode) => {
            let supported = xml::cpu_modes(caps);
            if !supported.iter().any(|s| s == mode) {
                return refuse(format!(
                    "`cpu_mode = \"{mode}\"` in [machines.{m}.libvirt] is not offered under \
                     {under} on this host (it offers: {})",
                    supported.join(", ")
                ));
            }
            Some(mode.to_string())
        }
        // A hypervisor inside needs the host's virtualisation flag: the host's own CPU.
        None if nested => Some("host-passthrough".to_string()),
        None => None,
    };
    let cpu = mode.map(|mode| Cpu {
        require: (nested && mode == "host-model")
            .then(|| host.virt_flag.map(String::from))
            .flatten(),
        mode,
    });
    Ok(Hardware {
        graphics,
        video,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(options: &[(&str, OptionValue)]) -> MachineSpec {
        let mut spec = envrig_provider_api::testkit::spec("box", "env1", "vm");
        spec.options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        spec
    }

    const TCG_CAPS: &str = "<domainCapabilities><cpu><mode name='host-passthrough' \
        supported='no'/><mode name='maximum' supported='yes'/><mode name='host-model' \
        supported='yes'/></cpu><devices><graphics supported='yes'><enum name='type'>\
        <value>vnc</value></enum></graphics><video supported='yes'><enum name='modelType'>\
        <value>vga</value><value>cirrus</value><value>virtio</value></enum></video>\
        </devices></domainCapabilities>";

    fn s(v: &str) -> OptionValue {
        OptionValue::Str(v.into())
    }

    #[test]
    fn nothing_asked_is_the_default_hardware() {
        let h = choose(&spec(&[]), "qemu", "", &HostCpu::default()).unwrap();
        assert_eq!(
            (h.graphics, h.video.as_str(), h.cpu),
            (None, "cirrus", None)
        );
    }

    #[test]
    fn offered_modes_and_models_are_taken_and_others_refused_with_what_is_offered() {
        let host = HostCpu::default();
        let h = choose(
            &spec(&[
                ("graphics", s("vnc")),
                ("video", s("vga")),
                ("cpu_mode", s("maximum")),
            ]),
            "qemu",
            TCG_CAPS,
            &host,
        )
        .unwrap();
        assert_eq!(h.video, "vga");
        assert_eq!(h.cpu.unwrap().mode, "maximum");
        let e = choose(
            &spec(&[("cpu_mode", s("host-passthrough"))]),
            "qemu",
            TCG_CAPS,
            &host,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not offered under TCG") && e.contains("maximum, host-model"),
            "{e}"
        );
        let e = choose(
            &spec(&[("graphics", s("vnc")), ("video", s("qxl"))]),
            "qemu",
            TCG_CAPS,
            &host,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("offers vga, cirrus, virtio"), "{e}");
        let e = choose(&spec(&[("video", s("vga"))]), "qemu", TCG_CAPS, &host)
            .unwrap_err()
            .to_string();
        assert!(e.contains("add `graphics = \"vnc\"`"), "{e}");
        let e = choose(&spec(&[("graphics", s("spice"))]), "qemu", TCG_CAPS, &host)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qemu-system-modules-spice"), "{e}");
    }

    #[test]
    fn nested_needs_kvm_that_allows_it_and_passes_the_hosts_cpu_through() {
        let nested = [("nested", OptionValue::Bool(true))];
        let on = HostCpu {
            virt_flag: Some("vmx"),
            nested_enabled: Some(true),
        };
        let e = choose(&spec(&nested), "qemu", TCG_CAPS, &on)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs KVM"), "{e}");
        let off = HostCpu {
            nested_enabled: Some(false),
            ..on.clone()
        };
        let e = choose(&spec(&nested), "kvm", TCG_CAPS, &off)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested=1"), "{e}");
        let h = choose(&spec(&nested), "kvm", TCG_CAPS, &on).unwrap();
        assert_eq!(
            h.cpu,
            Some(Cpu {
                mode: "host-passthrough".into(),
                require: None
            })
        );
        let model = [
            ("nested", OptionValue::Bool(true)),
            ("cpu_mode", s("host-model")),
        ];
        let h = choose(&spec(&model), "kvm", TCG_CAPS, &on).unwrap();
        assert_eq!(h.cpu.unwrap().require.as_deref(), Some("vmx"));
    }
}
