//! Method payload decoding: a hand-rolled fast path for `basic.publish`, amq-protocol for the
//! rest, and RabbitMQ's checks that amq-protocol cannot express (fields it drops on parse).

use super::codec::erlang_binary;
use super::error::AmqpError;
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::{Buf, Bytes};

/// `basic.publish` with exchange and routing key kept as raw bytes: RabbitMQ does not check
/// UTF-8 on publish, and keeping `Bytes` avoids two allocations per message.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Exchange name (may be non-UTF-8; such an exchange never exists).
    pub exchange: Bytes,
    /// Routing key, forwarded as is.
    pub routing_key: Bytes,
    /// Return the message if it cannot be routed.
    pub mandatory: bool,
    /// Not supported by RabbitMQ (540).
    pub immediate: bool,
}

/// A decoded method.
#[derive(Debug, Clone)]
pub enum Method {
    /// `basic.publish` (fast path).
    Publish(Publish),
    /// Everything else, decoded by amq-protocol.
    Other(AMQPClass),
}

/// Why a method payload could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// Unknown class or method id: RabbitMQ 3.10 drops the socket without a close frame.
    Unknown,
    /// Known method, undecodable fields: 501 FRAME_ERROR, or a RabbitMQ-specific reply.
    Invalid(AmqpError),
}

fn read_shortstr(p: &mut Bytes) -> Option<Bytes> {
    if p.is_empty() {
        return None;
    }
    let len = p.get_u8() as usize;
    if p.len() < len {
        return None;
    }
    Some(p.split_to(len))
}

fn decode_publish(args: &Bytes) -> Option<Publish> {
    let mut p = args.clone();
    if p.len() < 2 {
        return None;
    }
    p.advance(2); // ticket
    let exchange = read_shortstr(&mut p)?;
    let routing_key = read_shortstr(&mut p)?;
    if p.len() != 1 {
        return None;
    }
    let bits = p.get_u8();
    Some(Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// Whether the (class, method) pair is one AMQP 0-9-1 defines.
fn is_known(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Decode a method frame payload (which starts with class and method id).
pub fn decode(class_id: u16, method_id: u16, payload: &Bytes) -> Result<Method, DecodeError> {
    if !is_known(class_id, method_id) {
        return Err(DecodeError::Unknown);
    }
    let args = payload.slice(4..);
    let cannot_decode = || {
        DecodeError::Invalid(
            AmqpError::frame_error(format!("cannot decode {}", erlang_binary(&args)))
                .on(class_id, method_id),
        )
    };
    if (class_id, method_id) == (60, 40) {
        return decode_publish(&args)
            .map(Method::Publish)
            .ok_or_else(cannot_decode);
    }
    // Nested tables are bounded before amq-protocol's recursive parser sees them; a table
    // too deep to decode gets the reply of any undecodable method.
    if super::table::check_method(class_id, method_id, &args).is_err() {
        return Err(cannot_decode());
    }
    match parse_class(&payload[..]) {
        Ok(([], m)) => {
            // basic.qos: amq-protocol drops prefetch_size; RabbitMQ refuses anything but 0.
            if (class_id, method_id) == (60, 10)
                && let Some(&[a, b, c, d]) = args.get(0..4)
            {
                let size = u32::from_be_bytes([a, b, c, d]);
                if size != 0 {
                    return Err(DecodeError::Invalid(
                        AmqpError::not_implemented(format!("prefetch_size!=0 ({size})")).on(60, 10),
                    ));
                }
            }
            Ok(Method::Other(m))
        }
        _ => {
            if has_malformed_utf8_shortstr(class_id, method_id, &args) {
                return Err(DecodeError::Invalid(
                    AmqpError::frame_error("Malformed UTF-8 in shortstr").on(0, 0),
                ));
            }
            Err(cannot_decode())
        }
    }
}

/// RabbitMQ reports a non-UTF-8 name in a declare/bind/delete as "Malformed UTF-8 in shortstr".
/// The methods it checks all start with a ticket (u16) followed by a shortstr name.
fn has_malformed_utf8_shortstr(class_id: u16, method_id: u16, args: &Bytes) -> bool {
    let starts_with_name = matches!(
        (class_id, method_id),
        (40, 10)
            | (40, 20)
            | (40, 30)
            | (40, 40)
            | (50, 10)
            | (50, 20)
            | (50, 30)
            | (50, 40)
            | (50, 50)
            | (60, 20)
            | (60, 70)
    );
    if !starts_with_name || args.len() < 3 {
        return false;
    }
    let mut p = args.slice(2..);
    matches!(read_shortstr(&mut p), Some(s) if std::str::from_utf8(&s).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{Frame, FrameCodec, put_method};
    use amq_protocol::protocol::basic;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn roundtrip(m: AMQPClass) -> (u16, u16, Bytes) {
        let mut b = BytesMut::new();
        put_method(&mut b, 1, m);
        match (FrameCodec { frame_max: 0 })
            .decode(&mut b)
            .unwrap()
            .unwrap()
        {
            Frame::Method {
                class_id,
                method_id,
                payload,
                ..
            } => (class_id, method_id, payload),
            f => panic!("{f:?}"),
        }
    }

    /// The fast path agrees with amq-protocol for every flag combination.
    #[test]
    fn publish_fast_path_matches_amq_protocol() {
        for (mandatory, immediate) in [(false, false), (true, false), (false, true), (true, true)] {
            let m = basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
                mandatory,
                immediate,
            };
            let (c, id, payload) = roundtrip(AMQPClass::Basic(basic::AMQPMethod::Publish(m)));
            match decode(c, id, &payload).unwrap() {
                Method::Publish(p) => {
                    assert_eq!(&p.exchange[..], b"amq.topic");
                    assert_eq!(&p.routing_key[..], b"a.b.c");
                    assert_eq!((p.mandatory, p.immediate), (mandatory, immediate));
                }
                m => panic!("{m:?}"),
            }
        }
    }

    #[test]
    fn unknown_methods_are_distinguished_from_bad_fields() {
        let payload = Bytes::from_static(&[0, 60, 0, 255]);
        assert!(matches!(
            decode(60, 255, &payload),
            Err(DecodeError::Unknown)
        ));
        let payload = Bytes::from_static(&[0, 60, 0, 10, 0, 0]);
        match decode(60, 10, &payload) {
            Err(DecodeError::Invalid(e)) => {
                assert_eq!(e.text, "FRAME_ERROR - cannot decode <<0,0>>")
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn qos_prefetch_size_is_not_implemented() {
        let payload = Bytes::from_static(&[0, 60, 0, 10, 0, 0, 0, 1, 0, 0, 0]);
        match decode(60, 10, &payload) {
            Err(DecodeError::Invalid(e)) => {
                assert_eq!(e.code.code(), 540);
                assert_eq!(e.text, "NOT_IMPLEMENTED - prefetch_size!=0 (1)");
            }
            r => panic!("{r:?}"),
        }
    }
}
