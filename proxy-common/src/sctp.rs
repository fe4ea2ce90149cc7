//! SCTP's checksum (CRC32c, RFC 9260 §6.8 and Appendix A) and how a port change moves it.
//!
//! The CRC32c covers the whole SCTP packet (common header and chunks, its own field zeroed) and
//! nothing of the IP header, so rewriting an address leaves it valid; rewriting a port does not.
//! A CRC is linear over GF(2): for two messages of one length, `crc(a) ^ crc(b)` is the
//! register-zero CRC of `a ^ b`. A port change makes `a ^ b` four bytes (the ports' XOR) and
//! `len - 4` zeros, whose CRC is the four bytes' polynomial times `x^(8 len)` modulo the
//! polynomial: one multiplication by a power looked up by length ([`word_powers`]), whatever the
//! packet's size, where recomputing would read every byte. The arithmetic is zlib's
//! `crc32_combine`'s (reflected: bit 31 is the `x^0` coefficient).
//!
//! [`checksum`] is the textbook bitwise CRC, for tests and tools building SCTP packets.

/// CRC32c's polynomial, reflected.
const POLY: u32 = 0x82f6_3b78;

/// The checksum field's offset in the SCTP common header (stored least significant byte
/// first: the CRC's bytes in the order the algorithm emits them).
pub const CHECKSUM_OFFSET: usize = 8;

/// The common header's length: ports, verification tag, checksum.
pub const HEADER_LEN: usize = 12;

/// `a(x) b(x) mod P(x)`, reflected; without branches, so a verifier walks it once.
#[inline(always)]
pub const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 0;
    while bit < 32 {
        product ^= b & 0u32.wrapping_sub((a >> (31 - bit)) & 1);
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        bit += 1;
    }
    product
}

/// SCTP packets are whole 32-bit words (chunks are padded), at most 65,535 bytes.
pub const WORDS: usize = 16_384;

/// `x^(32 w) mod P(x)` for every packet length of `w` words: what a change of the first four
/// bytes of a packet that long is multiplied by ([`port_change`]). 64 KiB, for the kernel
/// programs' read-only data: one lookup instead of a loop per packet.
pub const fn word_powers() -> [u32; WORDS] {
    // x^32, from x^1 (bit 30) squared five times.
    let mut x32 = 1u32 << 30;
    let mut i = 0;
    while i < 5 {
        x32 = multiply(x32, x32);
        i += 1;
    }
    let mut table = [0u32; WORDS];
    // x^0.
    let mut power = 1u32 << 31;
    let mut w = 0;
    while w < WORDS {
        table[w] = power;
        power = multiply(power, x32);
        w += 1;
    }
    table
}

/// What XORing the first four bytes of an SCTP packet with `delta` (the old ports XOR the
/// new, as on the wire) does to its CRC32c, given `power`, [`word_powers`]' entry for the
/// packet's length: XOR the checksum field, read least significant byte first, with the value
/// returned. The four bytes read least significant first are the change's polynomial; followed
/// by the rest of the packet as zeros, its register-zero CRC is that times `x^(8 len)`.
#[inline(always)]
pub fn port_change(delta: [u8; 4], power: u32) -> u32 {
    multiply(power, u32::from_le_bytes(delta))
}

/// The CRC32c of `bytes` (RFC 9260 Appendix A), as the checksum field holds it once read least
/// significant byte first; the caller zeroes the field first.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn the_reference_checksum_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value, and RFC 3720 B.4's 32 zero bytes.
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
    }

    fn packet(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    }

    #[test]
    fn a_port_change_moves_the_checksum_as_recomputing_it_would() {
        let powers = word_powers();
        for len in (12..400)
            .step_by(4)
            .chain([1_480, 1_500, 8_952, 9_000, 65_532])
        {
            let old = packet(len, len as u32);
            for new_ports in [[0u8, 80, 31, 144], [0xff, 0xff, 0, 1], [0, 0, 0, 0]] {
                let mut new = old.clone();
                new[..4].copy_from_slice(&new_ports);
                let delta = [0, 1, 2, 3].map(|i| old[i] ^ new[i]);
                assert_eq!(
                    checksum(&old) ^ port_change(delta, powers[len / 4]),
                    checksum(&new),
                    "{len} bytes, ports {new_ports:?}"
                );
            }
        }
    }

    #[test]
    fn no_change_moves_nothing() {
        assert_eq!(port_change([0; 4], word_powers()[375]), 0);
    }
}
