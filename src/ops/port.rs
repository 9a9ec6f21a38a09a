//! `port MACHINE [GUEST_PORT]`: the host side of a running machine's forwarded ports, as its
//! engine published them (engine-chosen host ports included: `run` environments, `ports =
//! ["80"]`), read from the engine like everything else.

use envrig_provider_api::{PortSpec, Protocol};

use super::context::Context;
use super::error::OpError;
use super::project::Project;

/// A guest port as `port` takes it: `80`, `80/tcp`, `53/udp`.
pub fn parse_guest_port(s: &str) -> Result<(u16, Protocol), String> {
    let (n, proto) = match s.split_once('/') {
        Some((n, "tcp")) => (n, Protocol::Tcp),
        Some((n, "udp")) => (n, Protocol::Udp),
        Some((_, p)) => return Err(format!("`{s}`: the protocol is tcp or udp, not `{p}`")),
        None => (s, Protocol::Tcp),
    };
    match n.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(format!("`{s}` is not a port: write it like 80 or 53/udp")),
    }
}

/// The forwarded ports of running `machine`, by guest port, those of `guest` only when
/// given (an error when it has none such).
pub async fn port(
    ctx: &Context,
    project: &Project,
    machine: &str,
    guest: Option<(u16, Protocol)>,
) -> Result<Vec<PortSpec>, OpError> {
    let (_, o) = super::exec::running_machine(ctx, project, machine).await?;
    let mut ports: Vec<PortSpec> = o
        .ports
        .into_iter()
        .filter(|p| guest.is_none_or(|(g, proto)| p.guest_port == g && p.protocol == proto))
        .collect();
    // In the guest's order, whatever order the engine lists them in.
    ports.sort_by_key(|p| (p.guest_port, p.protocol.as_str(), p.host_port));
    match guest {
        Some((g, proto)) if ports.is_empty() => Err(OpError::Usage(format!(
            "`{machine}` forwards no port {g}/{}; `envrig port {machine}` lists those it does",
            proto.as_str()
        ))),
        _ => Ok(ports),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ports_are_read_with_an_optional_protocol() {
        assert_eq!(parse_guest_port("80"), Ok((80, Protocol::Tcp)));
        assert_eq!(parse_guest_port("53/udp"), Ok((53, Protocol::Udp)));
        assert!(parse_guest_port("0").is_err());
        assert!(parse_guest_port("80/sctp").is_err());
        assert!(parse_guest_port("http").is_err());
    }
}
