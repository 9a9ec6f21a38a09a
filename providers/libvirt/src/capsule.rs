//! Capsules that keep their processes: the snapshot of a running machine is exported with
//! its memory (libvirt's save image, `memory.save`, taken at the moment its flattened disk
//! is), checked on import against what this host can run (machine type, CPU model, memory)
//! before anything is made, and an imported machine resumes from it: the same machine,
//! moved (its own MACs and clock here, its name, machine-id and host keys kept).

use std::path::Path;

use envrig_provider_api::{ProviderError, Result};

use crate::error::{engine, io};
use crate::saveimage::SaveImage;
use crate::warm::{Cold, MEMORY, MEMORY_WHY};
use crate::{LibvirtProvider, xml};

/// What a memory image needs of the host that resumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Needs {
    pub machine: String,
    pub cpu_model: Option<String>,
    pub memory_kib: u64,
}

/// What the machine described by `xml` (a save image's) needs: its machine type, CPU model
/// and memory, read from its shape.
pub(crate) fn needs(xml: &str) -> Needs {
    let mut n = Needs {
        machine: String::new(),
        cpu_model: None,
        memory_kib: 0,
    };
    for line in xml::shape(xml) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["machine", _arch, m] => n.machine = m.to_string(),
            ["cpu", "model", m] => n.cpu_model = Some(m.to_string()),
            ["memory", v, unit] => {
                let v: u64 = v.parse().unwrap_or(0);
                n.memory_kib = match *unit {
                    "b" | "bytes" => v / 1024,
                    "MiB" | "M" => v.saturating_mul(1024),
                    "GiB" | "G" => v.saturating_mul(1024 * 1024),
                    _ => v,
                };
            }
            _ => {}
        }
    }
    n
}

/// Why this host cannot resume memory of `needs`, given its capabilities XML, its domain
/// capabilities XML and its available memory; `None` when it can.
pub(crate) fn cannot_resume(
    needs: &Needs,
    caps: &str,
    domcaps: &str,
    available_kib: Option<u64>,
) -> Option<String> {
    if needs.machine.is_empty() {
        return Some("its saved memory names no machine type".into());
    }
    let offered = caps.contains(&format!(">{}<", needs.machine))
        || caps.contains(&format!("canonical='{}'", needs.machine));
    if !offered {
        return Some(format!(
            "its saved memory needs QEMU machine type {}, which this host's QEMU does not offer",
            needs.machine
        ));
    }
    if let Some(model) = &needs.cpu_model
        && !domcaps.contains(&format!(">{model}<"))
    {
        return Some(format!(
            "its saved memory needs CPU model {model}, which this host's QEMU does not offer"
        ));
    }
    if let Some(avail) = available_kib
        && avail < needs.memory_kib
    {
        return Some(format!(
            "its saved memory needs {} MiB, and this host has {} MiB available",
            needs.memory_kib / 1024,
            avail / 1024
        ));
    }
    None
}

/// The memory this host has available (`MemAvailable`), in KiB.
fn available_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The head of the memory image in an exported member (a tar), when it holds one.
pub(crate) fn memory_in_tar(src: &Path) -> std::io::Result<Option<SaveImage>> {
    let mut archive = tar::Archive::new(std::fs::File::open(src)?);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.to_string_lossy() != MEMORY {
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(std::io::Error::other(
                "its memory.save is a link or special file",
            ));
        }
        return SaveImage::read_from(entry).map(Some);
    }
    Ok(None)
}

impl LibvirtProvider {
    /// Saves paused domain `id`'s memory into `dest` (the domain stops, its disk closed).
    pub(crate) async fn save_paused(&self, id: &str, dest: &Path) -> Result<()> {
        let (id, dest) = (id.to_string(), dest.to_path_buf());
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            crate::warm::save_domain(&dom, &dest)
        })
        .await
    }

    /// Whether this host can resume the memory in exported member `src` (none: it can);
    /// refused ([`ProviderError::Refused`]) with why and what to do.
    pub(crate) async fn check_resume_member(&self, src: &Path) -> Result<()> {
        let src2 = src.to_path_buf();
        let image = tokio::task::spawn_blocking(move || memory_in_tar(&src2))
            .await
            .map_err(|e| io("read the export", std::io::Error::other(e)))?;
        let image = match image {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(ProviderError::Refused {
                    message: format!("its saved memory cannot be read ({e})"),
                });
            }
        };
        if self.remote.is_some() {
            return Err(ProviderError::Refused {
                message: "its saved memory cannot be resumed on a remote libvirt host; `--cold` brings its disk back and boots it".into(),
            });
        }
        let n = needs(&image.xml);
        let machine = n.machine.clone();
        let (caps, domcaps) = self
            .blocking(move |c| {
                let caps = c
                    .capabilities()
                    .map_err(|e| engine("read the host's capabilities", e))?;
                let dom = c
                    .domain_capabilities(None, Some("x86_64"), Some(&machine), None, 0)
                    .unwrap_or_default();
                Ok((caps, dom))
            })
            .await?;
        match cannot_resume(&n, &caps, &domcaps, available_kib()) {
            None => Ok(()),
            Some(why) => Err(ProviderError::Refused {
                message: format!(
                    "{why}; `envrig import --cold` brings its disk back and boots it instead"
                ),
            }),
        }
    }

    /// Resumes imported machine `id` from the memory image at `memory` (moved into its
    /// folder), as the same machine; removes the image after, whatever happens.
    pub(crate) async fn resume_imported(&self, id: &str, memory: &Path) -> Result<()> {
        let result = async {
            let image = SaveImage::read(memory)
                .map_err(|e| io("read the saved memory", e))?;
            let (mine, differs) = self.restorable_xml(id, &image.xml).await?;
            if let Some(differs) = differs {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "its saved memory is of a machine of another shape than its Envfile makes ({differs}); `envrig import --cold` brings its disk back and boots it"
                    ),
                });
            }
            self.restore_memory(id, memory, image, &mine, None)
                .await
                .map_err(|c| {
                    let (Cold::Before(why) | Cold::After(why)) = c;
                    ProviderError::Conflict {
                        message: format!(
                            "cannot resume it from its saved memory ({why}); `envrig import --cold` brings its disk back and boots it"
                        ),
                    }
                })
        }
        .await;
        let _ = std::fs::remove_file(memory);
        result
    }
}

/// Files an exported member may carry beside its disk and kernel.
pub(crate) const MEMBER_EXTRAS: [&str; 2] = [MEMORY, MEMORY_WHY];

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'><memory unit='KiB'>262144</memory><vcpu>1</vcpu>\
        <os><type arch='x86_64' machine='pc-i440fx-10.0'>hvm</type></os>\
        <cpu mode='custom'><model fallback='forbid'>qemu64</model></cpu><devices/></domain>";

    #[test]
    fn needs_are_read_from_the_saved_description() {
        assert_eq!(
            needs(XML),
            Needs {
                machine: "pc-i440fx-10.0".into(),
                cpu_model: Some("qemu64".into()),
                memory_kib: 262144
            }
        );
    }

    #[test]
    fn a_host_without_the_machine_type_cpu_or_memory_cannot_resume() {
        let n = needs(XML);
        let caps = "<machine maxCpus='255'>pc-i440fx-10.0</machine>";
        let domcaps = "<model usable='yes'>qemu64</model>";
        assert_eq!(cannot_resume(&n, caps, domcaps, Some(1 << 20)), None);
        let why = cannot_resume(&n, "<machine>pc-i440fx-9.2</machine>", domcaps, None).unwrap();
        assert!(why.contains("machine type pc-i440fx-10.0"), "{why}");
        let why = cannot_resume(&n, caps, "<model>host</model>", None).unwrap();
        assert!(why.contains("CPU model qemu64"), "{why}");
        let why = cannot_resume(&n, caps, domcaps, Some(1024)).unwrap();
        assert!(
            why.contains("256 MiB") && why.contains("1 MiB available"),
            "{why}"
        );
        assert!(cannot_resume(&needs("<domain/>"), caps, domcaps, None).is_some());
    }
}
