//! HPACK header block decoder (RFC 7541).
//!
//! One [`Decoder`] mirrors the dynamic table of one peer's encoder, so every
//! header block of a connection must pass through it, in order. Decoding
//! does not allocate except to store dynamic-table entries and to grow the
//! two scratch buffers that receive Huffman-decoded strings.

use std::collections::VecDeque;

use crate::huffman;

/// Per-entry overhead counted by the dynamic table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Continuation octets accepted after an integer's prefix: values up to
/// 2^28 + prefix maximum. Longer encodings are errors (RFC 7541 §5.1
/// allows rejecting "excessively large" encodings); nothing in a header
/// block this crate accepts comes close.
const MAX_INTEGER_CONTINUATIONS: u32 = 4;

/// Why a header block could not be decoded. The HPACK state is then out of
/// sync with the peer's encoder, so the connection must be closed
/// (a `COMPRESSION_ERROR` in HTTP/2 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HpackError {
    /// The block ends inside a field representation.
    #[error("header block is truncated")]
    Truncated,
    /// An integer is encoded with too many octets.
    #[error("integer encoding too long")]
    IntegerTooLong,
    /// An index is 0 or refers past the end of the dynamic table.
    #[error("header table index {0} out of bounds")]
    IndexOutOfBounds(usize),
    /// A dynamic table size update exceeds the allowed maximum.
    #[error("dynamic table size update to {size} exceeds the limit of {limit}")]
    TableSizeTooLarge {
        /// The requested size.
        size: usize,
        /// The largest size the decoder allows.
        limit: usize,
    },
    /// A dynamic table size update after the first field of a block
    /// (RFC 7541 §4.2).
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
    /// A block whose last representation is a dynamic table size update
    /// (no field follows it): a decoding error for HTTP/2 decoders that
    /// h2spec's hpack 4.2 case holds to. No real request is such a block.
    #[error("header block ends with a dynamic table size update")]
    TableSizeUpdateAtEnd,
    /// A Huffman-coded string contains the EOS symbol.
    #[error("Huffman-coded string contains EOS")]
    HuffmanEos,
    /// A Huffman-coded string ends with more than 7 bits of padding.
    #[error("Huffman padding longer than 7 bits")]
    HuffmanPaddingTooLong,
    /// A Huffman-coded string's padding is not a prefix of EOS (all ones).
    #[error("Huffman padding is not a prefix of EOS")]
    HuffmanInvalidPadding,
}

/// The static table (RFC 7541 Appendix A); index `i` is entry `i + 1`.
pub(crate) const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// One dynamic-table entry: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        Entry { bytes: bytes.into_boxed_slice(), name_len: name.len() }
    }

    fn field(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.name_len.min(self.bytes.len()))
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table (RFC 7541 §2.3.2 and §4), newest entry first.
#[derive(Debug)]
struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    /// Entry `index` of the combined index space (1-based, static first).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some(&field) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok(field);
        }
        index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.entries.get(i))
            .map(Entry::field)
            .ok_or(HpackError::IndexOutOfBounds(index))
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let Some(old) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= old.size();
        }
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    /// Adds an entry, evicting old ones; an entry larger than the whole
    /// table empties it and is not added (§4.4).
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front(entry);
    }
}

/// A stateful HPACK decoder for the header blocks of one connection.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// Largest size a dynamic table size update may set: the
    /// `SETTINGS_HEADER_TABLE_SIZE` the decoding endpoint advertised.
    limit: usize,
    /// Scratch buffers for Huffman-decoded names and values.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder whose dynamic table starts at, and may be resized up to,
    /// `max_table_size` octets.
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: DynamicTable { entries: VecDeque::new(), size: 0, max_size: max_table_size },
            limit: max_table_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Current dynamic table size in octets (RFC 7541 §4.1).
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// Decodes one complete header block (HEADERS plus CONTINUATION
    /// fragments, concatenated), calling `emit` with each field's name and
    /// value in order. An error from `emit` stops decoding and is returned;
    /// after any error the decoder must not be used for further blocks.
    pub fn decode<E>(&mut self, block: &[u8], mut emit: impl FnMut(&[u8], &[u8]) -> Result<(), E>) -> Result<(), E>
    where
        E: From<HpackError>,
    {
        let Decoder { table, limit, name_buf, value_buf } = self;
        let mut pos = 0;
        let mut fields_seen = false;
        let mut ends_with_size_update = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = decode_integer(block, &mut pos, 7)?;
                let (name, value) = table.get(index)?;
                emit(name, value)?;
            } else if first & 0x40 != 0 {
                // Literal header field with incremental indexing (§6.2.1).
                let index = decode_integer(block, &mut pos, 6)?;
                let name = if index == 0 { decode_string(block, &mut pos, name_buf)? } else { table.get(index)?.0 };
                let value = decode_string(block, &mut pos, value_buf)?;
                emit(name, value)?;
                // Copy before inserting: `name` may borrow an entry that the
                // insertion evicts (§4.4).
                let entry = Entry::new(name, value);
                table.insert(entry);
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3), only at the start of a
                // block (§4.2).
                if fields_seen {
                    return Err(HpackError::LateTableSizeUpdate.into());
                }
                let size = decode_integer(block, &mut pos, 5)?;
                if size > *limit {
                    return Err(HpackError::TableSizeTooLarge { size, limit: *limit }.into());
                }
                table.set_max_size(size);
                ends_with_size_update = true;
                continue;
            } else {
                // Literal header field without indexing (§6.2.2, 0000) or
                // never indexed (§6.2.3, 0001).
                let index = decode_integer(block, &mut pos, 4)?;
                let name = if index == 0 { decode_string(block, &mut pos, name_buf)? } else { table.get(index)?.0 };
                let value = decode_string(block, &mut pos, value_buf)?;
                emit(name, value)?;
            }
            fields_seen = true;
            ends_with_size_update = false;
        }
        if ends_with_size_update {
            return Err(HpackError::TableSizeUpdateAtEnd.into());
        }
        Ok(())
    }
}

/// Decodes an integer (§5.1) whose `prefix_bits`-bit prefix (1..=7) is in
/// `block[*pos]`, advancing `pos` past it.
fn decode_integer(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<usize, HpackError> {
    let max_prefix = (1u8 << prefix_bits) - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)? & max_prefix;
    *pos += 1;
    if first < max_prefix {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(max_prefix);
    for i in 0..MAX_INTEGER_CONTINUATIONS {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        // At most 127 + 2^28 - 1 after four octets: no overflow, even on
        // 32-bit targets.
        value += usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::IntegerTooLong)
}

/// Decodes a string literal (§5.2) at `block[*pos]`, advancing `pos` past
/// it. A raw string is borrowed from `block`; a Huffman-coded one is
/// decoded into `scratch`.
fn decode_string<'a>(block: &'a [u8], pos: &mut usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8], HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = decode_integer(block, pos, 7)?;
    let start = *pos;
    let raw = start.checked_add(len).and_then(|end| block.get(start..end)).ok_or(HpackError::Truncated)?;
    *pos = start + len;
    if huffman {
        scratch.clear();
        huffman::decode(raw, scratch)?;
        Ok(scratch)
    } else {
        Ok(raw)
    }
}

#[cfg(test)]
mod tests;
