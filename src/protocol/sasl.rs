//! SASL responses of `connection.start-ok` (PLAIN and AMQPLAIN), parsed on the server side
//! (amq-protocol only generates them).

use amq_protocol::types::{AMQPValue, parsing::parse_field_table};

/// Credentials extracted from a SASL response.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Parse a response for `mechanism`; `None` if the mechanism is unknown or the bytes malformed.
pub fn parse(mechanism: &str, response: &[u8]) -> Option<Credentials> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        _ => None,
    }
}

/// PLAIN: `[authzid] \0 user \0 password`.
fn parse_plain(response: &[u8]) -> Option<Credentials> {
    let mut parts = response.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    Some(Credentials {
        username: String::from_utf8(user.to_vec()).ok()?,
        password: String::from_utf8(pass.to_vec()).ok()?,
    })
}

/// AMQPLAIN: a field table without its 4-byte length prefix, holding LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Option<Credentials> {
    let mut buf = Vec::with_capacity(response.len() + 4);
    buf.extend_from_slice(&(response.len() as u32).to_be_bytes());
    buf.extend_from_slice(response);
    super::table::check_container(&buf, 0, true).ok()?;
    let (_, table) = parse_field_table(&buf[..]).ok()?;
    let get = |k: &str| match table.inner().get(k)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    };
    Some(Credentials {
        username: get("LOGIN")?,
        password: get("PASSWORD")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        assert_eq!(
            parse("PLAIN", b"\0guest\0guest"),
            Some(Credentials {
                username: "guest".into(),
                password: "guest".into()
            })
        );
        assert_eq!(parse("PLAIN", b"guest"), None);
        assert_eq!(parse("EXTERNAL", b"\0a\0b"), None);
    }

    #[test]
    fn amqplain() {
        // LOGIN S "guest", PASSWORD S "secret" (as pika and the Java client encode it)
        let mut r = vec![5];
        r.extend_from_slice(b"LOGIN");
        r.push(b'S');
        r.extend_from_slice(&5u32.to_be_bytes());
        r.extend_from_slice(b"guest");
        r.push(8);
        r.extend_from_slice(b"PASSWORD");
        r.push(b'S');
        r.extend_from_slice(&6u32.to_be_bytes());
        r.extend_from_slice(b"secret");
        assert_eq!(
            parse("AMQPLAIN", &r),
            Some(Credentials {
                username: "guest".into(),
                password: "secret".into()
            })
        );
    }
}
