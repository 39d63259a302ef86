//! bindmodel: **one line of why** for `who`: whether a socket blocks a
//! plain bind and a SO_REUSEADDR bind of its port, and a client's
//! connection said as what it is.

use super::{client_connection, judge_unknown, next_server, Existing, Request};

/// "blocks a plain bind and a SO_REUSEADDR bind: it listens", for the
/// next server binding the socket's own address as its own uid.
pub fn bind_line(e: &Existing, on_port: &[Existing]) -> String {
    let plain = Request {
        reuseaddr: false,
        ..next_server(e)
    };
    let reuse = Request {
        reuseaddr: true,
        ..next_server(e)
    };
    let (a, b) = (judge_unknown(e, &plain), judge_unknown(e, &reuse));
    let mut line = match (&a.known, &b.known) {
        (Some(p), Some(r)) if p.blocks && r.blocks => {
            format!("blocks a plain bind and a SO_REUSEADDR bind: {}", r.why)
        }
        (Some(p), Some(r)) if p.blocks => format!(
            "blocks a plain bind, not a SO_REUSEADDR bind: {}",
            r.why
        ),
        (Some(_), Some(r)) if !r.blocks => format!("blocks no bind of its address: {}", r.why),
        (Some(p), None) if p.blocks => format!(
            "blocks a plain bind; a SO_REUSEADDR bind: cannot tell ({} not readable: no process holds it or it is not ours to read)",
            b.unknown.join(", ")
        ),
        _ => format!(
            "cannot tell which binds it blocks ({} not readable)",
            a.unknown.iter().chain(&b.unknown).cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    if client_connection(e, on_port) {
        line.push_str(
            "; a client's connection: the kernel picked this port for an outgoing connect() (it lies in net.ipv4.ip_local_port_range, unless the client bound it); fix: add it to net.ipv4.ip_local_reserved_ports",
        );
    }
    line
}
