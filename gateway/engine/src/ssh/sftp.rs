//! SFTP (version 3, what OpenSSH's `sftp` and `scp` speak) as the gateway reads it between a
//! client and an SSH server: packets cut from each direction's byte stream, the requests
//! that name paths (for gates), and each file's transfer followed from OPEN to CLOSE (for
//! the record: direction, path, size, SHA-256).
//!
//! The session that uses them is `session/sftp.rs`.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::config::FileContents;

/// The largest packet accepted: OpenSSH's limit (256 KiB) and room for its header.
pub const MAX_PACKET: usize = (256 << 10) + 1024;
/// Out-of-order file data kept per transfer while waiting for what comes before it; beyond
/// this the transfer is still followed, but its digest is given up.
const MAX_REORDER: usize = 8 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("an SFTP packet of {0} bytes exceeds the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("a malformed SFTP packet: {0}")]
    Malformed(&'static str),
}

/// Cuts one direction's byte stream into whole packets (without their length prefix).
#[derive(Default)]
pub struct Packets {
    buf: Vec<u8>,
}

impl Packets {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, if one has arrived.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, SftpError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_PACKET {
            return Err(SftpError::TooLarge(len));
        }
        if len == 0 {
            return Err(SftpError::Malformed("an empty packet"));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let packet = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(packet))
    }
}

/// A request from the client, as far as the gateway needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Open {
        id: u32,
        path: String,
        write: bool,
    },
    Close {
        id: u32,
        handle: Vec<u8>,
    },
    Read {
        id: u32,
        handle: Vec<u8>,
        offset: u64,
    },
    Write {
        id: u32,
        handle: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
    },
    Remove {
        id: u32,
        path: String,
    },
    Rename {
        id: u32,
        from: String,
        to: String,
    },
    Mkdir {
        id: u32,
        path: String,
    },
    Rmdir {
        id: u32,
        path: String,
    },
    Setstat {
        id: u32,
        path: String,
    },
    Symlink {
        id: u32,
        link: String,
        target: String,
    },
    Opendir {
        id: u32,
        path: String,
    },
    /// Anything else (INIT, listing, stat, realpath, extensions): passed as it is.
    Other,
}

impl Request {
    /// The request's id, which its reply carries (`None` for the ones passed as they are).
    pub fn id(&self) -> Option<u32> {
        match self {
            Request::Open { id, .. }
            | Request::Close { id, .. }
            | Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::Remove { id, .. }
            | Request::Rename { id, .. }
            | Request::Mkdir { id, .. }
            | Request::Rmdir { id, .. }
            | Request::Setstat { id, .. }
            | Request::Symlink { id, .. }
            | Request::Opendir { id, .. } => Some(*id),
            Request::Other => None,
        }
    }

    /// What a gate judges, for a request that changes the server's files: `put PATH`,
    /// `get PATH`, `rm PATH`, `rename FROM TO`, `mkdir PATH`, `rmdir PATH`, `chmod PATH`,
    /// `ln -s TARGET LINK`, and `ls PATH` for a directory listed.
    pub fn statement(&self) -> Option<String> {
        Some(match self {
            Request::Open { path, write, .. } => {
                format!("{} {path}", if *write { "put" } else { "get" })
            }
            Request::Remove { path, .. } => format!("rm {path}"),
            Request::Rename { from, to, .. } => format!("rename {from} {to}"),
            Request::Mkdir { path, .. } => format!("mkdir {path}"),
            Request::Rmdir { path, .. } => format!("rmdir {path}"),
            Request::Setstat { path, .. } => format!("chmod {path}"),
            Request::Symlink { link, target, .. } => format!("ln -s {target} {link}"),
            Request::Opendir { path, .. } => format!("ls {path}"),
            _ => return None,
        })
    }
}

/// A reply from the server, as far as the gateway needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Handle { id: u32, handle: Vec<u8> },
    Data { id: u32, data: Vec<u8> },
    Status { id: u32, code: u32 },
    Other,
}

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const SETSTAT: u8 = 9;
const OPENDIR: u8 = 11;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
/// `SSH_FXF_WRITE`, `SSH_FXF_APPEND`, `SSH_FXF_CREAT`, `SSH_FXF_TRUNC`.
const WRITING: u32 = 0x02 | 0x04 | 0x08 | 0x10;

/// Reads a packet's fields in order, every length checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SftpError> {
        if self.0.len() < n {
            return Err(SftpError::Malformed("a field runs past the packet's end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SftpError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SftpError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, SftpError> {
        let b = self.take(8)?;
        let mut n = [0u8; 8];
        n.copy_from_slice(b);
        Ok(u64::from_be_bytes(n))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SftpError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    /// A path: bytes, shown as UTF-8 (lossily: a path is not always text).
    fn path(&mut self) -> Result<String, SftpError> {
        Ok(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }
}

/// Decodes a client's packet.
pub fn request(packet: &[u8]) -> Result<Request, SftpError> {
    let mut f = Fields(packet);
    let kind = f.u8()?;
    Ok(match kind {
        OPEN => {
            let id = f.u32()?;
            let path = f.path()?;
            let flags = f.u32()?;
            Request::Open {
                id,
                path,
                write: flags & WRITING != 0,
            }
        }
        CLOSE => Request::Close {
            id: f.u32()?,
            handle: f.bytes()?,
        },
        READ => Request::Read {
            id: f.u32()?,
            handle: f.bytes()?,
            offset: f.u64()?,
        },
        WRITE => Request::Write {
            id: f.u32()?,
            handle: f.bytes()?,
            offset: f.u64()?,
            data: f.bytes()?,
        },
        REMOVE => Request::Remove {
            id: f.u32()?,
            path: f.path()?,
        },
        RENAME => Request::Rename {
            id: f.u32()?,
            from: f.path()?,
            to: f.path()?,
        },
        MKDIR => Request::Mkdir {
            id: f.u32()?,
            path: f.path()?,
        },
        RMDIR => Request::Rmdir {
            id: f.u32()?,
            path: f.path()?,
        },
        OPENDIR => Request::Opendir {
            id: f.u32()?,
            path: f.path()?,
        },
        SETSTAT => Request::Setstat {
            id: f.u32()?,
            path: f.path()?,
        },
        // OpenSSH's server takes (link path, target path) in this, the reverse of the draft.
        SYMLINK => Request::Symlink {
            id: f.u32()?,
            link: f.path()?,
            target: f.path()?,
        },
        _ => Request::Other,
    })
}

/// Decodes a server's packet.
pub fn reply(packet: &[u8]) -> Result<Reply, SftpError> {
    let mut f = Fields(packet);
    let kind = f.u8()?;
    Ok(match kind {
        HANDLE => Reply::Handle {
            id: f.u32()?,
            handle: f.bytes()?,
        },
        DATA => Reply::Data {
            id: f.u32()?,
            data: f.bytes()?,
        },
        STATUS => Reply::Status {
            id: f.u32()?,
            code: f.u32()?,
        },
        _ => Reply::Other,
    })
}

/// A packet with its length prefix, as it travels.
pub fn framed(packet: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + packet.len());
    bytes.extend_from_slice(&(packet.len() as u32).to_be_bytes());
    bytes.extend_from_slice(packet);
    bytes
}

/// A `STATUS` reply refusing request `id` (`SSH_FX_PERMISSION_DENIED`) with `message`, as the
/// gateway sends it when a gate refuses: a whole packet, length prefix included.
pub fn permission_denied(id: u32, message: &str) -> Vec<u8> {
    let mut body = vec![STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // language tag: none
    framed(&body)
}

/// A file transfer that ended (its handle closed), for the record.
#[derive(Debug, PartialEq, Eq)]
pub struct Transferred {
    pub path: String,
    /// `upload` (client to server) or `download`.
    pub direction: &'static str,
    pub bytes: u64,
    /// Of the file's bytes in offset order; `None` when they did not form one run from 0
    /// (a client that seeks, or skips a range), so no digest would be honest.
    pub sha256: Option<String>,
}

/// File data on its way (a WRITE's, a READ's reply), for the record.
#[derive(Debug, PartialEq, Eq)]
pub struct Moved {
    pub path: String,
    pub offset: u64,
    /// The record keeps these bytes (the connection's `file_contents`).
    pub keep: bool,
}

/// The transfers in flight on one SFTP session.
pub struct Transfers {
    contents: FileContents,
    /// OPEN requests waiting for their handle: id → (path, writing).
    opening: HashMap<u32, (String, bool)>,
    /// Open files by handle.
    open: HashMap<Vec<u8>, Transfer>,
    /// READ requests waiting for their data: id → (handle, offset).
    reading: HashMap<u32, (Vec<u8>, u64)>,
}

struct Transfer {
    path: String,
    upload: bool,
    /// Whether the record keeps the contents, decided at the first data.
    keep: Option<bool>,
    bytes: u64,
    hasher: Sha256,
    /// The offset the digest has reached.
    next: u64,
    /// Data that came ahead of `next`, by offset.
    ahead: BTreeMap<u64, Vec<u8>>,
    ahead_bytes: usize,
    /// The digest was given up.
    broken: bool,
}

impl Transfer {
    fn data(&mut self, offset: u64, data: &[u8], contents: FileContents) -> Moved {
        let keep = *self.keep.get_or_insert_with(|| match contents {
            FileContents::None => false,
            FileContents::All => true,
            FileContents::Text => reads_as_text(data),
        });
        self.follow(offset, data);
        Moved {
            path: self.path.clone(),
            offset,
            keep,
        }
    }

    /// Counts the bytes and carries the digest on while they come in offset order.
    fn follow(&mut self, offset: u64, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.broken || data.is_empty() {
            return;
        }
        if offset < self.next {
            // Written or read again: the bytes in offset order are no longer one stream.
            self.broken = true;
            return;
        }
        if offset > self.next {
            self.ahead_bytes += data.len();
            self.ahead.insert(offset, data.to_vec());
            if self.ahead_bytes > MAX_REORDER {
                self.broken = true;
                self.ahead.clear();
            }
            return;
        }
        self.hasher.update(data);
        self.next += data.len() as u64;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let chunk = entry.remove();
            self.ahead_bytes -= chunk.len();
            self.hasher.update(&chunk);
            self.next += chunk.len() as u64;
        }
    }
}

/// UTF-8 without a NUL byte (a chunk may end inside a character).
fn reads_as_text(data: &[u8]) -> bool {
    !data.contains(&0)
        && match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none() && data.len() - e.valid_up_to() < 4,
        }
}

impl Transfers {
    pub fn new(contents: FileContents) -> Transfers {
        Transfers {
            contents,
            opening: HashMap::new(),
            open: HashMap::new(),
            reading: HashMap::new(),
        }
    }

    /// Follows a request on its way to the server; file data to record comes back.
    pub fn request(&mut self, request: &Request) -> Option<Moved> {
        match request {
            Request::Open { id, path, write } => {
                self.opening.insert(*id, (path.clone(), *write));
            }
            Request::Read { id, handle, offset } if self.open.contains_key(handle) => {
                self.reading.insert(*id, (handle.clone(), *offset));
            }
            Request::Write {
                handle,
                offset,
                data,
                ..
            } => {
                let contents = self.contents;
                return self
                    .open
                    .get_mut(handle)
                    .map(|t| t.data(*offset, data, contents));
            }
            _ => {}
        }
        None
    }

    /// Follows a reply on its way to the client; file data to record comes back.
    pub fn reply(&mut self, reply: &Reply) -> Option<Moved> {
        match reply {
            Reply::Handle { id, handle } => {
                if let Some((path, upload)) = self.opening.remove(id) {
                    let transfer = Transfer {
                        path,
                        upload,
                        keep: None,
                        bytes: 0,
                        hasher: Sha256::new(),
                        next: 0,
                        ahead: BTreeMap::new(),
                        ahead_bytes: 0,
                        broken: false,
                    };
                    self.open.insert(handle.clone(), transfer);
                }
            }
            Reply::Data { id, data } => {
                let contents = self.contents;
                if let Some((handle, offset)) = self.reading.remove(id)
                    && let Some(t) = self.open.get_mut(&handle)
                {
                    return Some(t.data(offset, data, contents));
                }
            }
            // A refused OPEN, or the end of a file reached by a READ.
            Reply::Status { id, .. } => {
                self.opening.remove(id);
                self.reading.remove(id);
            }
            Reply::Other => {}
        }
        None
    }

    /// Ends the transfer on `handle` (its CLOSE is about to be forwarded); `None` for a
    /// handle that is no file transfer (a directory listing).
    pub fn close(&mut self, handle: &[u8]) -> Option<Transferred> {
        let t = self.open.remove(handle)?;
        // Data still waiting ahead of a gap never joined the run from offset 0.
        let whole = !t.broken && t.ahead.is_empty();
        Some(Transferred {
            path: t.path,
            direction: if t.upload { "upload" } else { "download" },
            bytes: t.bytes,
            sha256: whole.then(|| hex::encode(t.hasher.finalize())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    fn open(id: u32, path: &str, flags: u32) -> Vec<u8> {
        let mut p = vec![OPEN];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend(string(path.as_bytes()));
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes()); // attrs: no flags
        p
    }

    fn write(id: u32, handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        let mut p = vec![WRITE];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend(string(handle));
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend(string(data));
        p
    }

    fn handle(id: u32, handle: &[u8]) -> Vec<u8> {
        let mut p = vec![HANDLE];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend(string(handle));
        p
    }

    #[test]
    fn packets_are_cut_from_a_stream_in_any_pieces_and_bounded() {
        let stream = [framed(&open(1, "/a", 1)), framed(&handle(1, b"h"))].concat();
        let mut packets = Packets::default();
        let mut got = Vec::new();
        for byte in &stream {
            packets.push(std::slice::from_ref(byte));
            while let Some(p) = packets.next_packet().unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got, [open(1, "/a", 1), handle(1, b"h")]);
        let mut huge = Packets::default();
        huge.push(&(MAX_PACKET as u32 + 1).to_be_bytes());
        assert_eq!(huge.next_packet(), Err(SftpError::TooLarge(MAX_PACKET + 1)));
        // A field that claims more than the packet holds is an error, not a panic.
        let mut short = open(1, "/a", 1);
        short.truncate(8);
        assert!(request(&short).is_err());
    }

    #[test]
    fn requests_that_change_files_read_as_statements() {
        assert_eq!(
            request(&open(7, "/srv/app.conf", 0x1a))
                .unwrap()
                .statement()
                .as_deref(),
            Some("put /srv/app.conf")
        );
        assert_eq!(
            request(&open(8, "/etc/passwd", 0x01))
                .unwrap()
                .statement()
                .as_deref(),
            Some("get /etc/passwd")
        );
        let mut rm = vec![REMOVE];
        rm.extend_from_slice(&9u32.to_be_bytes());
        rm.extend(string(b"/srv/data"));
        assert_eq!(
            request(&rm).unwrap().statement().as_deref(),
            Some("rm /srv/data")
        );
    }

    #[test]
    fn an_upload_is_followed_to_its_digest_even_when_chunks_come_out_of_order() {
        let mut t = Transfers::new(FileContents::None);
        t.request(&request(&open(1, "/up", 0x1a)).unwrap());
        t.reply(&reply(&handle(1, b"h1")).unwrap());
        for (offset, data) in [(0u64, &b"hello "[..]), (11, b"!"), (6, b"world")] {
            t.request(&request(&write(2, b"h1", offset, data)).unwrap());
        }
        let done = t.close(b"h1").unwrap();
        assert_eq!(done.direction, "upload");
        assert_eq!(done.bytes, 12);
        assert_eq!(
            done.sha256.unwrap(),
            hex::encode(Sha256::digest(b"hello world!"))
        );
        assert!(t.close(b"h1").is_none(), "closed once");
    }

    #[test]
    fn a_download_is_followed_through_its_reads_and_a_gap_gives_up_the_digest() {
        let mut t = Transfers::new(FileContents::None);
        t.request(&request(&open(1, "/down", 0x01)).unwrap());
        t.reply(&reply(&handle(1, b"h")).unwrap());
        let read = |id: u32, offset: u64| {
            let mut p = vec![READ];
            p.extend_from_slice(&id.to_be_bytes());
            p.extend(string(b"h"));
            p.extend_from_slice(&offset.to_be_bytes());
            p.extend_from_slice(&32768u32.to_be_bytes());
            request(&p).unwrap()
        };
        let data = |id: u32, bytes: &[u8]| {
            let mut p = vec![DATA];
            p.extend_from_slice(&id.to_be_bytes());
            p.extend(string(bytes));
            reply(&p).unwrap()
        };
        t.request(&read(2, 0));
        t.request(&read(3, 4));
        t.reply(&data(2, b"abcd"));
        t.reply(&data(3, b"ef"));
        let done = t.close(b"h").unwrap();
        assert_eq!((done.direction, done.bytes), ("download", 6));
        assert_eq!(done.sha256.unwrap(), hex::encode(Sha256::digest(b"abcdef")));

        // A client that skips a range: the size is known, an honest digest is not.
        t.request(&request(&open(4, "/sparse", 0x01)).unwrap());
        t.reply(&reply(&handle(4, b"s")).unwrap());
        let mut p = vec![READ];
        p.extend_from_slice(&5u32.to_be_bytes());
        p.extend(string(b"s"));
        p.extend_from_slice(&100u64.to_be_bytes());
        p.extend_from_slice(&10u32.to_be_bytes());
        t.request(&request(&p).unwrap());
        t.reply(&data(5, b"late"));
        let done = t.close(b"s").unwrap();
        assert_eq!((done.bytes, done.sha256), (4, None));
    }

    #[test]
    fn contents_are_kept_as_the_connection_says_decided_at_a_files_first_bytes() {
        let upload = |contents, first: &[u8], second: &[u8]| {
            let mut t = Transfers::new(contents);
            t.request(&request(&open(1, "/f", 0x1a)).unwrap());
            t.reply(&reply(&handle(1, b"h")).unwrap());
            let a = t
                .request(&request(&write(2, b"h", 0, first)).unwrap())
                .unwrap();
            let b = t
                .request(&request(&write(3, b"h", first.len() as u64, second)).unwrap())
                .unwrap();
            (a.keep, b.keep)
        };
        assert_eq!(upload(FileContents::None, b"text", b"more"), (false, false));
        assert_eq!(upload(FileContents::All, b"\0bin", b"x"), (true, true));
        // Text ending inside a character is still text; later bytes follow the first verdict.
        assert_eq!(
            upload(
                FileContents::Text,
                "caf\u{e9}".as_bytes().split_last().unwrap().1,
                b"\0"
            ),
            (true, true)
        );
        assert_eq!(
            upload(FileContents::Text, b"\x7fELF\0\0", b"text"),
            (false, false)
        );
        assert_eq!(upload(FileContents::Text, b"\xff\xfe", b""), (false, false));
    }

    #[test]
    fn a_refusal_is_a_status_packet_the_client_understands() {
        let packet = permission_denied(42, "refused by gate: no");
        let mut packets = Packets::default();
        packets.push(&packet);
        let body = packets.next_packet().unwrap().unwrap();
        assert_eq!(reply(&body).unwrap(), Reply::Status { id: 42, code: 3 });
    }
}
