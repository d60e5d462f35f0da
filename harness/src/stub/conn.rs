//! The TCP connection of a session, buffered: `gdbstub` writes a reply byte
//! by byte and flushes at the end of each packet, and its own `TcpStream`
//! connection sends each byte as its own TCP segment (`TCP_NODELAY`), which
//! through QEMU's user-mode network costs milliseconds per packet.

use std::io::{Read, Write};
use std::net::TcpStream;

use gdbstub::conn::{Connection, ConnectionExt};

/// A [`TcpStream`] whose output is sent on `flush` (and before reads).
#[derive(Debug)]
pub struct BufferedConn {
    stream: TcpStream,
    out: Vec<u8>,
}

impl BufferedConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            out: Vec::with_capacity(super::PACKET_BUFFER + 16),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            Write::write_all(&mut self.stream, &self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl Connection for BufferedConn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.send()?;
        Write::flush(&mut self.stream)
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.stream.set_nodelay(true)
    }
}

impl ConnectionExt for BufferedConn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.send()?;
        self.stream.set_nonblocking(false)?;
        let mut b = [0u8];
        Read::read_exact(&mut self.stream, &mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.send()?;
        self.stream.set_nonblocking(true)?;
        let mut b = [0u8];
        match self.stream.peek(&mut b) {
            Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(Some(b[0])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
