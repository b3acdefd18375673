//! One entry of the hash-chained record, and its canonical encoding.
//!
//! `hash(entry) = SHA-256(encoding)`, and the encoding starts with the previous entry's hash,
//! so each entry commits to everything before it. The payload is not in the entry: the entry
//! holds `payload_digest = SHA-256(nonce || payload)` with a random per-entry nonce stored (and
//! purged) with the payload, so a purge removes the bytes and nobody can later confirm a guess
//! about a short payload.
//!
//! Architecture invariant: no I/O here.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The hash before the first entry.
pub const GENESIS: Hash = [0; 32];

const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub prev_hash: Hash,
    pub session: String,
    pub seq: u64,
    pub kind: String,
    pub time_ms: u64,
    /// A JSON object.
    pub meta: String,
    pub payload_digest: Hash,
}

/// An entry's fields, borrowed: what is encoded and hashed. The writer chains events through
/// this view, so it copies their text once, into the encoding, and not into an [`Entry`] first.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    pub index: u64,
    pub prev_hash: &'a Hash,
    pub session: &'a str,
    pub seq: u64,
    pub kind: &'a str,
    pub time_ms: u64,
    pub meta: &'a str,
    pub payload_digest: &'a Hash,
}

impl Fields<'_> {
    /// The encoding's length, with room for the hash a stored entry carries after it.
    pub fn stored_len(&self) -> usize {
        const FIXED: usize = 1 + 8 + 32 + 8 + 8 + 32; // version, index, prev, seq, time, digest
        const LENGTHS: usize = 3 * 4; // session, kind and meta are each prefixed by a u32
        const HASH: usize = 32;
        FIXED + LENGTHS + self.session.len() + self.kind.len() + self.meta.len() + HASH
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(self.prev_hash);
        put_str(out, self.session);
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_str(out, self.kind);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        put_str(out, self.meta);
        out.extend_from_slice(self.payload_digest);
    }
}

impl Entry {
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            index: self.index,
            prev_hash: &self.prev_hash,
            session: &self.session,
            seq: self.seq,
            kind: &self.kind,
            time_ms: self.time_ms,
            meta: &self.meta,
            payload_digest: &self.payload_digest,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let fields = self.fields();
        let mut out = Vec::with_capacity(fields.stored_len());
        fields.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, String> {
        let mut r = Reader(bytes);
        if r.take(1)? != [VERSION] {
            return Err("unknown entry version".into());
        }
        let entry = Entry {
            index: r.u64()?,
            prev_hash: r.hash()?,
            session: r.str()?,
            seq: r.u64()?,
            kind: r.str()?,
            time_ms: r.u64()?,
            meta: r.str()?,
            payload_digest: r.hash()?,
        };
        if !r.0.is_empty() {
            return Err("trailing bytes after the entry".into());
        }
        Ok(entry)
    }

    pub fn hash(&self) -> Hash {
        Sha256::digest(self.encode()).into()
    }
}

pub fn payload_digest(nonce: &[u8], payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(payload);
    h.finalize().into()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("entry is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "short integer")?,
        ))
    }
    fn hash(&mut self) -> Result<Hash, String> {
        self.take(32)?.try_into().map_err(|_| "short hash".into())
    }
    fn str(&mut self) -> Result<String, String> {
        let len =
            u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "short length")?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "text is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            index: 7,
            prev_hash: [1; 32],
            session: "s-1".into(),
            seq: 3,
            kind: "frame".into(),
            time_ms: 1_700_000_000_000,
            meta: r#"{"dir":"out"}"#.into(),
            payload_digest: payload_digest(b"nonce", b"hello"),
        }
    }

    #[test]
    fn encoding_round_trips() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        // The writer sizes each stored entry from this; a wrong length costs a reallocation.
        assert_eq!(e.encode().len() + 32, e.fields().stored_len());
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = entry().hash();
        let mut changed = vec![];
        let mut e = entry();
        e.index += 1;
        changed.push(e.hash());
        let mut e = entry();
        e.prev_hash[0] ^= 1;
        changed.push(e.hash());
        let mut e = entry();
        e.session.push('x');
        changed.push(e.hash());
        let mut e = entry();
        e.meta = "{}".into();
        changed.push(e.hash());
        let mut e = entry();
        e.payload_digest[31] ^= 1;
        changed.push(e.hash());
        assert!(changed.iter().all(|h| *h != base));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bytes = entry().encode();
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..cut]).is_err());
        }
        assert!(Entry::decode(&[9, 9, 9]).is_err());
    }
}
