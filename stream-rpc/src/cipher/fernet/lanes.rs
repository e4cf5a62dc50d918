//! CBC encryption of several tokens side by side.
//!
//! CBC encryption is serial within a token (each block waits for the one
//! before it), but the tokens of a batch are independent: their chains run
//! side by side, [`LANES`] at a time, so that the AES unit encrypts several
//! blocks at once where one token alone leaves it waiting.

use aes::Aes128;
use aes::cipher::BlockEncrypt as _;
use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned as _;
use aes::cipher::{BlockBackend, BlockClosure, BlockSizeUser, ParBlocks};

use super::token::{BLOCK, HEADER_LEN, MAC_LEN, Stamped};

/// How many tokens' CBC chains are encrypted side by side: the `aes`
/// crate's AES-NI backend encrypts eight independent blocks at once, in
/// about the time one chained block takes.
pub(super) const LANES: usize = 8;

/// CBC-encrypts the bodies of a group of binary tokens in place: the tokens
/// lie end to end in `raw`, ending at `ends`, each a header, a padded
/// plaintext and room for its MAC; `items` hold their IVs.
pub(super) fn encrypt_lanes(aes: &Aes128, raw: &mut [u8], items: &[Stamped], ends: &[usize]) {
    let mut lanes = Lanes {
        bodies: Default::default(),
        chains: [[0u8; BLOCK]; LANES],
        count: items.len(),
    };
    let mut rest = raw;
    let mut start = 0;
    for ((item, &end), (chain, body)) in items
        .iter()
        .zip(ends)
        .zip(lanes.chains.iter_mut().zip(lanes.bodies.iter_mut()))
    {
        let (token, tail) = std::mem::take(&mut rest).split_at_mut(end - start);
        let len = token.len();
        *body = &mut token[HEADER_LEN..len - MAC_LEN];
        *chain = item.iv;
        rest = tail;
        start = end;
    }
    aes.encrypt_with_backend(lanes);
}

/// Up to [`LANES`] CBC chains, encrypted with the cipher's backend taken
/// once: block `n` of every body still that long goes through the backend
/// together, in one parallel call when there are several (the AES-NI
/// backend pipelines eight), alone when there is one.
struct Lanes<'a> {
    bodies: [&'a mut [u8]; LANES],
    /// Each chain's last ciphertext block, the IV at first.
    chains: [[u8; BLOCK]; LANES],
    count: usize,
}

impl BlockSizeUser for Lanes<'_> {
    type BlockSize = U16;
}

impl BlockClosure for Lanes<'_> {
    // Inlined into the backend's own function, which is compiled for the
    // AES instructions, so that the blocks' encryption is inlined here in
    // turn rather than called block by block.
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(mut self, backend: &mut B) {
        let bodies = &mut self.bodies[..self.count];
        let chains = &mut self.chains[..self.count];
        if let ([body], [chain]) = (&mut *bodies, &mut *chains) {
            // One token: its chain alone, block by block.
            let mut last = u128::from_ne_bytes(*chain);
            // Bodies are whole blocks: nothing is left over.
            for block in body.as_chunks_mut::<BLOCK>().0 {
                *block = (u128::from_ne_bytes(*block) ^ last).to_ne_bytes();
                backend.proc_block_inplace(block.into());
                last = u128::from_ne_bytes(*block);
            }
            return;
        }
        let par = B::ParBlocksSize::USIZE;
        let longest = bodies
            .iter()
            .map(|body| body.len() / BLOCK)
            .max()
            .unwrap_or(0);
        let mut blocks = ParBlocks::<B>::default();
        for index in 0..longest {
            // The chains still running, `par` at a time.
            let mut first = 0;
            while first < bodies.len() {
                let mut live = 0;
                let mut next = first;
                while next < bodies.len() && live < par {
                    if let Some(plain) = bodies[next].as_chunks::<BLOCK>().0.get(index) {
                        let mixed = u128::from_ne_bytes(*plain) ^ u128::from_ne_bytes(chains[next]);
                        blocks[live].copy_from_slice(&mixed.to_ne_bytes());
                        live += 1;
                    }
                    next += 1;
                }
                match live {
                    0 => {}
                    1 => backend.proc_block_inplace(&mut blocks[0]),
                    // Unused slots hold stale blocks, encrypted for nothing:
                    // in parallel that costs about as much as one block.
                    _ => backend.proc_par_blocks_inplace(&mut blocks),
                }
                let mut done = blocks[..live].iter();
                for (body, chain) in bodies[first..next].iter_mut().zip(&mut chains[first..next]) {
                    if let Some(cipher) = body.as_chunks_mut::<BLOCK>().0.get_mut(index)
                        && let Some(block) = done.next()
                    {
                        cipher.copy_from_slice(block);
                        chain.copy_from_slice(block);
                    }
                }
                first = next;
            }
        }
    }
}
