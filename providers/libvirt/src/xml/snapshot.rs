//! A domain snapshot's XML: its name and the description envrig keeps its JSON in.

use quick_xml::Writer;
use quick_xml::events::Event;

use super::{close, open, text};

/// A domain snapshot's XML: its name, and `description` (envrig keeps JSON there).
pub fn snapshot(name: &str, description: &str) -> std::io::Result<String> {
    let mut w = Writer::new(Vec::new());
    open(&mut w, "domainsnapshot", &[])?;
    text(&mut w, "name", &[], name)?;
    text(&mut w, "description", &[], description)?;
    close(&mut w, "domainsnapshot")?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// The text of the first `<description>` directly inside a domain snapshot's XML.
pub fn snapshot_description(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                inside = depth == 2 && e.local_name().as_ref() == b"description";
            }
            Ok(Event::End(_)) => {
                if inside {
                    return Some(out);
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) if inside => {
                out.push_str(&t.decode().ok()?);
            }
            Ok(Event::GeneralRef(r)) if inside => {
                // quick-xml reports entity references apart from the text around them.
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c);
                    continue;
                }
                let name = String::from_utf8_lossy(&r).into_owned();
                out.push_str(match name.as_str() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => return None,
                });
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}
