//! `XENPROBE_DEBUG=PORT`: a failed guest test keeps its guest where it
//! failed and serves the GDB/LLDB stub on it (instead of destroying it right
//! away); the guest is destroyed once the debugger detaches.
//!
//! `XENPROBE_DEBUG` is a port (the stub binds 0.0.0.0 in the lab, whose port
//! forward only reaches dom0's external address, else 127.0.0.1) or a full
//! `ADDR:PORT`. `cargo xtask lab run` (and so the test runner for `live_*`
//! binaries) passes `XENPROBE_LAB_FORWARD=HOST:GUEST`, the lab's port
//! forward, so that the printed `lldb`/`gdb` command lines name the host
//! port. With several failing tests, they are served one after another.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use super::session::Session;

/// Port or `ADDR:PORT` to serve failed tests on.
pub const DEBUG_ENV: &str = "XENPROBE_DEBUG";
/// `HOST:GUEST`: the lab forwards 127.0.0.1:HOST on the host to dom0's GUEST.
pub const FORWARD_ENV: &str = "XENPROBE_LAB_FORWARD";

/// One stub at a time (one port).
static SERVING: Mutex<()> = Mutex::new(());

/// Where to listen and what the debugger connects to, from the two
/// environment values.
pub fn endpoints(debug: &str, forward: Option<&str>) -> Result<(SocketAddr, String), String> {
    let forward = forward.and_then(|f| {
        let (h, g) = f.split_once(':')?;
        Some((h.parse::<u16>().ok()?, g.parse::<u16>().ok()?))
    });
    let bind: SocketAddr = match debug.trim().parse::<u16>() {
        Ok(port) if forward.is_some() => SocketAddr::from(([0, 0, 0, 0], port)),
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => debug
            .trim()
            .parse()
            .map_err(|_| format!("{DEBUG_ENV}={debug:?}: expected a port or ADDR:PORT"))?,
    };
    let connect = match forward {
        Some((host, guest)) if guest == bind.port() => format!("127.0.0.1:{host}"),
        Some((host, guest)) => {
            return Err(format!(
            "{DEBUG_ENV}: port {} is not forwarded by the lab (127.0.0.1:{host} -> dom0:{guest}); \
                 use {DEBUG_ENV}={guest}",
            bind.port()
        ))
        }
        None if bind.ip().is_unspecified() => format!("127.0.0.1:{}", bind.port()),
        None => bind.to_string(),
    };
    Ok((bind, connect))
}

/// Called by the runner when a test failed: with `XENPROBE_DEBUG` set, serves
/// the stub on the guest as the test left it until the debugger detaches.
pub(crate) fn serve_on_failure(
    session: &mut Session,
    test: &str,
    image: &Path,
    error: &anyhow::Error,
) {
    let Ok(debug) = std::env::var(DEBUG_ENV) else {
        return;
    };
    let forward = std::env::var(FORWARD_ENV).ok();
    let (bind, connect) = match endpoints(&debug, forward.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("xenprobe: cannot serve the failed test {test}: {e}");
            return;
        }
    };
    let _one = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let name = session.name().to_string();
    eprintln!("xenprobe: test {test} FAILED: {error:#}");
    let served = crate::stub::serve_domain(session.dom(), bind, Some(image), |bound| {
        eprintln!(
            "xenprobe: guest {name} kept at the failure point; debug stub on {bound}, connect with:\n  \
             lldb {img} -o 'gdb-remote {connect}'\n  gdb {img} -ex 'target remote {connect}'",
            img = image.display()
        );
    });
    match served {
        Ok(end) => eprintln!("xenprobe: debugger left ({end:?}); destroying {name}"),
        Err(e) => eprintln!("xenprobe: debug stub for {test}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_in_and_out_of_the_lab() {
        let (b, c) = endpoints("1234", Some("40000:1234")).unwrap();
        assert_eq!(b.to_string(), "0.0.0.0:1234");
        assert_eq!(c, "127.0.0.1:40000");
        let (b, c) = endpoints("1234", None).unwrap();
        assert_eq!(b.to_string(), "127.0.0.1:1234");
        assert_eq!(c, "127.0.0.1:1234");
        let (b, _) = endpoints("10.0.0.1:99", None).unwrap();
        assert_eq!(b.to_string(), "10.0.0.1:99");
        assert!(endpoints("4321", Some("40000:1234")).is_err());
        assert!(endpoints("nope", None).is_err());
    }
}
