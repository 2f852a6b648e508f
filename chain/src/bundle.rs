//! Offline proof bundles in the C2SP tlog-proof form (c2sp.org/tlog-proof):
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64>            optional, application data (Canopy: the decision id)
//! index <leaf index>
//! <base64 hash>             the inclusion proof, one hash a line
//! …
//!
//! <signed checkpoint>       the checkpoint the proof leads to, with its signatures
//! ```
//!
//! A bundle is checked with nothing but itself, the leaf, and the log's verifier key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::ChainError;
use crate::merkle::{Hash, verify_inclusion};
use crate::note::{Checkpoint, NoteVerifier};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofBundle {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint, exactly as the log signed it.
    pub checkpoint: String,
}

impl ProofBundle {
    pub fn encode(&self) -> String {
        let mut text = format!("{HEADER}\n");
        if let Some(extra) = &self.extra {
            text.push_str(&format!("extra {}\n", BASE64.encode(extra)));
        }
        text.push_str(&format!("index {}\n", self.index));
        for hash in &self.proof {
            text.push_str(&BASE64.encode(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.checkpoint);
        text
    }

    pub fn parse(text: &str) -> Result<ProofBundle, ChainError> {
        let bad = |why: &str| ChainError::BadBundle(why.to_string());
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.lines().peekable();
        if lines.next() != Some(HEADER) {
            return Err(bad("it does not start with c2sp.org/tlog-proof@v1"));
        }
        let extra = match lines.peek().and_then(|l| l.strip_prefix("extra ")) {
            Some(encoded) => {
                let extra = BASE64
                    .decode(encoded)
                    .map_err(|_| bad("extra is not base64"))?;
                lines.next();
                Some(extra)
            }
            None => None,
        };
        let index = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("no index line"))?;
        let proof = lines
            .map(|line| {
                BASE64
                    .decode(line)
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        Ok(ProofBundle {
            extra,
            index,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Checks the checkpoint's signature by `verifier`, then that `leaf` is at `index` in
    /// the tree it commits to. Returns the verified checkpoint.
    pub fn verify(&self, leaf: &Hash, verifier: &NoteVerifier) -> Result<Checkpoint, ChainError> {
        let checkpoint = Checkpoint::verify(&self.checkpoint, verifier)?;
        verify_inclusion(
            leaf,
            self.index,
            checkpoint.size,
            &self.proof,
            &checkpoint.root,
        )?;
        Ok(checkpoint)
    }
}
