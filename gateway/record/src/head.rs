//! Signed heads: what makes the record evidence once a copy lives outside the gateway.
//!
//! Every commit ends with a head `(index, hash)` signed by the record key. Heads leave the
//! gateway three ways: `sluice verify --print-head` (for an auditor to keep), every batch a
//! sink delivers (an event of kind `head`, not a chain entry), and the local witness file
//! `record.head` beside the store, rewritten after each commit. `verify --head` reads them back
//! from any of those: a store that no longer reaches a head it once signed was rolled back,
//! cut, or forked.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::entry::Hash;

const HEAD_DOMAIN: &[u8] = b"sluice-record-head-v1";
/// The kind of the event a sink batch ends with: the signed head covering the batch.
pub const HEAD_KIND: &str = "head";
const ENCODED_LEN: usize = 8 + 32 + 64 + 32;

/// The signed head of the chain: anchor it elsewhere to make the record evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub index: u64,
    #[serde(with = "hex::serde")]
    pub hash: Hash,
    #[serde(with = "hex::serde")]
    pub signature: [u8; 64],
    #[serde(with = "hex::serde")]
    pub public_key: [u8; 32],
}

impl SignedHead {
    pub(super) fn message(index: u64, hash: &Hash) -> Vec<u8> {
        [HEAD_DOMAIN, &index.to_be_bytes(), hash].concat()
    }

    pub fn encode(&self) -> Vec<u8> {
        [
            &self.index.to_be_bytes()[..],
            &self.hash,
            &self.signature,
            &self.public_key,
        ]
        .concat()
    }

    pub fn decode(bytes: &[u8]) -> Option<SignedHead> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        Some(SignedHead {
            index: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            hash: bytes[8..40].try_into().ok()?,
            signature: bytes[40..104].try_into().ok()?,
            public_key: bytes[104..136].try_into().ok()?,
        })
    }

    /// Whether the signature holds for this index and hash under `public_key`.
    pub fn signature_holds(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.public_key) else {
            return false;
        };
        key.verify(
            &Self::message(self.index, &self.hash),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

/// A head kept outside the store, and where it came from (for the report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub head: SignedHead,
    pub source: String,
    /// Whether its key is trusted: an auditor's own copy is; the witness file beside the
    /// store is only as trustworthy as the store.
    pub trusted: bool,
}

/// Every signed head in `text`: `--print-head`'s output (a head as JSON, after the report
/// line), a head on its own, or a sink's NDJSON export whose `head` events carry one in their
/// meta. Anything else in the text is skipped.
pub fn heads_in_text(text: &str) -> Vec<SignedHead> {
    let mut heads = Vec::new();
    let mut rest = text;
    // Parse every JSON value that starts at a `{`, skipping text that is not JSON.
    while let Some(start) = rest.find('{') {
        rest = &rest[start..];
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
        match values.next() {
            Some(Ok(value)) => {
                collect_heads(&value, &mut heads);
                rest = &rest[values.byte_offset()..];
            }
            _ => rest = &rest[1..],
        }
    }
    heads
}

fn collect_heads(value: &serde_json::Value, heads: &mut Vec<SignedHead>) {
    if let Ok(head) = serde_json::from_value::<SignedHead>(value.clone()) {
        heads.push(head);
        return;
    }
    if value.get("kind").and_then(|k| k.as_str()) == Some(HEAD_KIND)
        && let Some(meta) = value.get("meta")
    {
        // A sink event: meta is an object, or its JSON text.
        let meta = match meta {
            serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
            other => other.clone(),
        };
        if let Ok(head) = serde_json::from_value::<SignedHead>(meta) {
            heads.push(head);
        }
    }
}

/// The heads in a file, or in every file under a folder (an S3 bucket's folder, a sink's
/// spool); `arg` may also be the JSON itself.
pub fn anchors_from(arg: &str) -> anyhow::Result<Vec<Anchor>> {
    let path = Path::new(arg);
    let mut found = Vec::new();
    if arg.trim_start().starts_with('{') {
        found.extend(heads_in_text(arg).into_iter().map(|head| Anchor {
            head,
            source: "--head".into(),
            trusted: true,
        }));
    } else if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        files.sort();
        for file in files {
            let text = String::from_utf8_lossy(&std::fs::read(&file)?).into_owned();
            found.extend(heads_in_text(&text).into_iter().map(|head| Anchor {
                head,
                source: file.display().to_string(),
                trusted: true,
            }));
        }
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--head {arg}: cannot read it: {e}"))?;
        found.extend(heads_in_text(&text).into_iter().map(|head| Anchor {
            head,
            source: arg.to_string(),
            trusted: true,
        }));
    }
    if found.is_empty() {
        anyhow::bail!("--head {arg}: no signed head found in it");
    }
    Ok(found)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// `record.head` beside the store: the newest signed head, rewritten in place after every
/// commit (no fsync: after a crash the page cache still has it; after a power cut it may be
/// older than the store, never newer). A store that comes back behind it lost commits, which
/// redb's repair does silently when the last commit's pages were damaged.
#[derive(Debug)]
pub struct Witness {
    file: File,
}

impl Witness {
    pub fn path_for(store: &Path) -> PathBuf {
        store.with_file_name("record.head")
    }

    pub fn open(store: &Path) -> std::io::Result<Witness> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(Self::path_for(store))?;
        Ok(Witness { file })
    }

    /// The head it holds; `None` when empty or unreadable (torn by a power cut).
    pub fn read(&self) -> Option<SignedHead> {
        let mut bytes = [0u8; ENCODED_LEN];
        self.file.read_exact_at(&mut bytes, 0).ok()?;
        SignedHead::decode(&bytes).filter(SignedHead::signature_holds)
    }

    pub fn write(&self, head: &SignedHead) -> std::io::Result<()> {
        self.file.write_all_at(&head.encode(), 0)
    }

    /// The head in the witness file beside a store, for offline verify.
    pub fn read_beside(store: &Path) -> Option<SignedHead> {
        let bytes = std::fs::read(Self::path_for(store)).ok()?;
        SignedHead::decode(bytes.get(..ENCODED_LEN)?).filter(SignedHead::signature_holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(index: u64) -> SignedHead {
        SignedHead {
            index,
            hash: [index as u8; 32],
            signature: [1; 64],
            public_key: [2; 32],
        }
    }

    #[test]
    fn heads_are_found_in_print_head_output_and_in_sink_exports() {
        let printed = format!(
            "record verified: 3 entries hold\n{}\n",
            serde_json::to_string_pretty(&head(2)).unwrap()
        );
        assert_eq!(heads_in_text(&printed), [head(2)]);
        let ndjson = [
            serde_json::json!({"index": 0, "kind": "frame", "meta": {"dir": "out"}}),
            serde_json::json!({"index": 5, "kind": "head", "meta": head(5)}),
            serde_json::json!({"index": 9, "kind": "head", "meta": serde_json::to_string(&head(9)).unwrap()}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        assert_eq!(heads_in_text(&ndjson), [head(5), head(9)]);
        assert!(heads_in_text("no json { here").is_empty());
    }
}
