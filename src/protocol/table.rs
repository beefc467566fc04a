//! Bounds on field tables before any recursive parse.
//!
//! amq-protocol parses nested tables and arrays recursively with no depth limit: a frame of
//! 126 KB nesting tables 18,000 deep overflows a 2 MiB worker stack and aborts the process.
//! Every place that hands client bytes holding a field table to amq-protocol first walks them
//! here, iteratively, with an explicit stack of at most [`MAX_TABLE_DEPTH`] containers: method
//! arguments ([`check_method`], called by `method::decode` for every method), content header
//! properties ([`check_properties`], the `headers` property), and the AMQPLAIN SASL response.
//! The walk follows amq-protocol's grammar (RabbitMQ's type letters), so a table it accepts
//! never reaches deeper than the walk saw.

/// Tables and arrays nested deeper than this are refused (RabbitMQ has no limit; no client
/// nests more than a few levels). Each level costs amq-protocol a few KiB of stack: 100 levels
/// stay far below tokio's 2 MiB worker stack.
pub const MAX_TABLE_DEPTH: usize = 100;

/// Why a table was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TableError {
    /// Nested deeper than [`MAX_TABLE_DEPTH`].
    TooDeep,
    /// Not a well-formed table (amq-protocol would refuse it too).
    Malformed,
}

fn u32_at(buf: &[u8], pos: usize) -> Result<usize, TableError> {
    let b = buf.get(pos..pos + 4).ok_or(TableError::Malformed)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Check the field table (`table`) or array whose 4-byte length is at `buf[pos]`; returns the
/// position after it.
pub fn check_container(buf: &[u8], pos: usize, table: bool) -> Result<usize, TableError> {
    // (end of the container, is a table) for each open container; no heap allocation.
    let mut stack = [(0usize, false); MAX_TABLE_DEPTH];
    let mut depth = 0;
    let mut pos = pos;
    let len = u32_at(buf, pos)?;
    pos += 4;
    let end = pos.checked_add(len).filter(|e| *e <= buf.len());
    stack[0] = (end.ok_or(TableError::Malformed)?, table);
    depth += 1;
    while depth > 0 {
        let (end, table) = stack[depth - 1];
        if pos == end {
            depth -= 1;
            continue;
        }
        if table {
            // The key: a shortstr.
            pos += 1 + *buf.get(pos).ok_or(TableError::Malformed)? as usize;
        }
        let ty = *buf
            .get(pos)
            .filter(|_| pos < end)
            .ok_or(TableError::Malformed)?;
        pos += 1;
        let size = match ty {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' => 4,
            // Infinities and NaN are not Erlang floats: RabbitMQ cannot decode them, and
            // they would not survive Warren's definitions file (JSON has no such numbers).
            b'f' => {
                let b = buf.get(pos..pos + 4).ok_or(TableError::Malformed)?;
                if !f32::from_be_bytes([b[0], b[1], b[2], b[3]]).is_finite() {
                    return Err(TableError::Malformed);
                }
                4
            }
            b'd' => {
                let b = buf.get(pos..pos + 8).ok_or(TableError::Malformed)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                if !f64::from_be_bytes(a).is_finite() {
                    return Err(TableError::Malformed);
                }
                8
            }
            b'D' => 5,
            b'L' | b'l' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => 4 + u32_at(buf, pos)?,
            b'F' | b'A' => {
                let inner_end = (pos + 4)
                    .checked_add(u32_at(buf, pos)?)
                    .filter(|e| *e <= end)
                    .ok_or(TableError::Malformed)?;
                if depth == MAX_TABLE_DEPTH {
                    return Err(TableError::TooDeep);
                }
                stack[depth] = (inner_end, ty == b'F');
                depth += 1;
                pos += 4;
                continue;
            }
            _ => return Err(TableError::Malformed),
        };
        pos = pos
            .checked_add(size)
            .filter(|p| *p <= end)
            .ok_or(TableError::Malformed)?;
    }
    Ok(pos)
}

/// The fields of a method's arguments up to and including its last table.
#[derive(Clone, Copy)]
enum F {
    Octet,
    Short,
    ShortStr,
    Table,
}

/// Layouts of the AMQP 0-9-1 methods whose arguments hold a field table (a client may send
/// any method, including the server's `connection.start`).
fn layout(class_id: u16, method_id: u16) -> &'static [F] {
    use F::*;
    match (class_id, method_id) {
        (10, 10) => &[Octet, Octet, Table],
        (10, 11) => &[Table],
        (40, 10) => &[Short, ShortStr, ShortStr, Octet, Table],
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet, Table],
        (50, 10) => &[Short, ShortStr, Octet, Table],
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet, Table],
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr, Table],
        (60, 20) => &[Short, ShortStr, ShortStr, Octet, Table],
        _ => &[],
    }
}

/// Check the tables among a method's arguments (`args`: the payload after class and method
/// id). Arguments too short to reach a table are left to the decoder, which refuses them.
pub fn check_method(class_id: u16, method_id: u16, args: &[u8]) -> Result<(), TableError> {
    let mut pos = 0;
    for f in layout(class_id, method_id) {
        pos = match f {
            F::Octet => pos + 1,
            F::Short => pos + 2,
            F::ShortStr => match args.get(pos) {
                Some(n) => pos + 1 + *n as usize,
                None => return Ok(()),
            },
            F::Table => {
                if pos + 4 > args.len() {
                    return Ok(());
                }
                check_container(args, pos, true)?
            }
        };
    }
    Ok(())
}

/// Whether raw `basic` content header properties (flags first) hold every property their flags
/// announce: each short string's length, the table's length, the integers fit in the bytes.
/// Contents are not interpreted (short strings are bytes, tables are checked elsewhere).
pub fn properties_fit(raw: &[u8]) -> bool {
    let Some(f) = raw.get(0..2) else {
        return false;
    };
    let flags = u16::from_be_bytes([f[0], f[1]]);
    let mut pos = 2usize;
    // content-type, content-encoding, headers, delivery-mode, priority, correlation-id,
    // reply-to, expiration, message-id, timestamp, type, user-id, app-id, cluster-id
    // (bits 15 down to 2): s = short string, t = table, 1/8 = fixed size.
    const LAYOUT: [u8; 14] = [
        b's', b's', b't', 1, 1, b's', b's', b's', b's', 8, b's', b's', b's', b's',
    ];
    for (i, kind) in LAYOUT.iter().enumerate() {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        let len = match kind {
            b's' => match raw.get(pos) {
                Some(n) => 1 + *n as usize,
                None => return false,
            },
            b't' => match raw.get(pos..pos + 4) {
                Some(b) => 4 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                None => return false,
            },
            n => *n as usize,
        };
        pos = match pos.checked_add(len) {
            Some(p) if p <= raw.len() => p,
            _ => return false,
        };
    }
    true
}

/// Check the `headers` property of raw content header properties (flags first), the one
/// property that holds a table. Properties too short to reach it are left to the decoder.
pub fn check_properties(raw: &[u8]) -> Result<(), TableError> {
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    let Some(f) = raw.get(0..2) else {
        return Ok(());
    };
    let flags = u16::from_be_bytes([f[0], f[1]]);
    if flags & HEADERS == 0 {
        return Ok(());
    }
    let mut pos = 2;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            match raw.get(pos) {
                Some(n) => pos += 1 + *n as usize,
                None => return Ok(()),
            }
        }
    }
    if pos + 4 > raw.len() {
        return Ok(());
    }
    check_container(raw, pos, true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_must_hold_what_their_flags_announce() {
        assert!(properties_fit(&[0, 0]));
        // content-encoding announced, nothing there (found by the channel fuzz target).
        assert!(!properties_fit(&[0x40, 0]));
        assert!(properties_fit(&[0x40, 0, 1, b'x']));
        assert!(!properties_fit(&[0x40, 0, 2, b'x']));
        // delivery-mode and priority: one octet each.
        assert!(properties_fit(&[0x18, 0, 2, 5]));
        assert!(!properties_fit(&[0x18, 0, 2]));
        // timestamp: eight octets.
        assert!(!properties_fit(&[0x00, 0x40, 0, 0, 0, 0]));
        // headers: the table's length must fit.
        assert!(properties_fit(&[0x20, 0, 0, 0, 0, 0]));
        assert!(!properties_fit(&[0x20, 0, 0, 0, 0, 9]));
        assert!(!properties_fit(&[0]));
    }
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, generation::gen_field_table};

    fn encode(t: &FieldTable) -> Vec<u8> {
        cookie_factory::gen_simple(gen_field_table(t), Vec::new()).unwrap()
    }

    /// A table nesting `depth` containers, alternating tables and arrays below the top.
    fn nested(depth: usize) -> Vec<u8> {
        let is_table = |i: usize| i.is_multiple_of(2);
        let mut content: Vec<u8> = Vec::new();
        for i in (1..depth).rev() {
            let ty = if is_table(i) { b'F' } else { b'A' };
            let value = [
                &[ty][..],
                &(content.len() as u32).to_be_bytes()[..],
                &content,
            ]
            .concat();
            content = if is_table(i - 1) {
                [&b"\x01a"[..], &value].concat()
            } else {
                value
            };
        }
        [&(content.len() as u32).to_be_bytes()[..], &content].concat()
    }

    fn levels(buf: &[u8]) -> usize {
        // depth as amq-protocol sees it
        fn t(v: &FieldTable) -> usize {
            1 + v.inner().values().map(val).max().unwrap_or(0)
        }
        fn val(v: &AMQPValue) -> usize {
            match v {
                AMQPValue::FieldTable(x) => t(x),
                AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(val).max().unwrap_or(0),
                _ => 0,
            }
        }
        let (_, table) = amq_protocol::types::parsing::parse_field_table(buf).unwrap();
        t(&table)
    }

    #[test]
    fn accepts_every_type_as_amq_protocol_encodes_it() {
        let mut inner = FieldTable::default();
        inner.insert("s".into(), AMQPValue::LongString("x".into()));
        let mut arr = FieldArray::default();
        arr.push(AMQPValue::Boolean(true));
        arr.push(AMQPValue::FieldTable(inner.clone()));
        let mut t = FieldTable::default();
        for (k, v) in [
            ("t", AMQPValue::Boolean(true)),
            ("b", AMQPValue::ShortShortInt(-1)),
            ("B", AMQPValue::ShortShortUInt(1)),
            ("s", AMQPValue::ShortInt(-2)),
            ("u", AMQPValue::ShortUInt(2)),
            ("I", AMQPValue::LongInt(-3)),
            ("i", AMQPValue::LongUInt(3)),
            ("l", AMQPValue::LongLongInt(-4)),
            ("f", AMQPValue::Float(1.5)),
            ("d", AMQPValue::Double(2.5)),
            (
                "D",
                AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 1, value: 5 }),
            ),
            ("S", AMQPValue::LongString("long".into())),
            ("A", AMQPValue::FieldArray(arr)),
            ("T", AMQPValue::Timestamp(7)),
            ("F", AMQPValue::FieldTable(inner)),
            ("x", AMQPValue::ByteArray(vec![1u8, 2].into())),
            ("V", AMQPValue::Void),
        ] {
            t.insert(k.into(), v);
        }
        let buf = encode(&t);
        assert_eq!(check_container(&buf, 0, true), Ok(buf.len()));
    }

    #[test]
    fn depth_limit_matches_what_the_parser_sees() {
        let ok = nested(MAX_TABLE_DEPTH);
        assert_eq!(levels(&ok), MAX_TABLE_DEPTH);
        assert_eq!(check_container(&ok, 0, true), Ok(ok.len()));
        let deep = nested(MAX_TABLE_DEPTH + 1);
        assert_eq!(check_container(&deep, 0, true), Err(TableError::TooDeep));
        let very = nested(40_000);
        assert_eq!(check_container(&very, 0, true), Err(TableError::TooDeep));
    }

    #[test]
    fn malformed_lengths_are_refused_without_reading_past_the_buffer() {
        let mut buf = nested(5);
        // inner length larger than its container
        buf[7] = 0xff;
        assert_eq!(check_container(&buf, 0, true), Err(TableError::Malformed));
        assert_eq!(
            check_container(&[0, 0, 0, 9, 1], 0, true),
            Err(TableError::Malformed)
        );
        assert_eq!(
            check_container(&[0, 0, 0, 3, 1, b'a', b'?'], 0, true),
            Err(TableError::Malformed)
        );
        assert_eq!(
            check_container(&[0, 0, 0, 3, 1, b'a', b'S'], 0, true),
            Err(TableError::Malformed)
        );
        assert_eq!(
            check_container(&[0, 0], 0, true),
            Err(TableError::Malformed)
        );
    }

    /// A durable queue declared with an infinite float argument made the next start fail (its
    /// definitions file held `null`): found by the `definitions` fuzz target.
    #[test]
    fn non_finite_floats_are_refused() {
        for v in [
            AMQPValue::Float(f32::INFINITY),
            AMQPValue::Float(f32::NAN),
            AMQPValue::Double(f64::NEG_INFINITY),
        ] {
            let mut t = FieldTable::default();
            t.insert("k".into(), v);
            assert_eq!(
                check_container(&encode(&t), 0, true),
                Err(TableError::Malformed)
            );
        }
        let mut t = FieldTable::default();
        t.insert("k".into(), AMQPValue::Double(1e300));
        assert!(check_container(&encode(&t), 0, true).is_ok());
    }

    #[test]
    fn finds_tables_in_method_arguments_and_properties() {
        let deep = nested(MAX_TABLE_DEPTH + 1);
        // queue.declare: ticket, name "q", bits, arguments
        let args = [&[0, 0, 1, b'q', 0][..], &deep].concat();
        assert_eq!(check_method(50, 10, &args), Err(TableError::TooDeep));
        let args = [&[0, 0, 1, b'q', 0][..], &nested(3)].concat();
        assert_eq!(check_method(50, 10, &args), Ok(()));
        // start-ok: client properties first
        assert_eq!(check_method(10, 11, &deep), Err(TableError::TooDeep));
        // truncated before the table: left to the decoder
        assert_eq!(check_method(50, 10, &[0, 0, 9]), Ok(()));
        // properties: content-type "t", headers
        let props = [&[0b1010_0000, 0, 1, b't'][..], &deep].concat();
        assert_eq!(check_properties(&props), Err(TableError::TooDeep));
        let props = [&[0b1010_0000, 0, 1, b't'][..], &nested(4)].concat();
        assert_eq!(check_properties(&props), Ok(()));
    }
}
