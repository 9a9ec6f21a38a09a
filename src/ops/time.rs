//! Times as labels carry them (RFC 3339) and as the CLI shows them (short ages).

/// Now, as written in `created` labels.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// How long ago an RFC 3339 time was, short: `12s`, `5m`, `3h`, `2d`.
pub fn age(created: &str) -> Option<String> {
    let t = humantime::parse_rfc3339(created).ok()?;
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .ok()?
        .as_secs();
    Some(match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    })
}

/// How long until an RFC 3339 time, short (`in 2h`), or `expired`.
pub fn until(at: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(at) else {
        return at.to_string();
    };
    match t.duration_since(std::time::SystemTime::now()) {
        Err(_) => "expired".to_string(),
        Ok(d) => {
            let s = d.as_secs();
            match s {
                s if s < 60 => format!("in {s}s"),
                s if s < 3600 => format!("in {}m", s / 60),
                s if s < 86400 => format!("in {}h", s / 3600),
                s => format!("in {}d", s / 86400),
            }
        }
    }
}
