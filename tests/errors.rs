//! Bad input: every malformed frame, oversized frame, unknown method, wrong state or bad
//! argument gets RabbitMQ 3.10.8's reply (recorded by integration/python/test_wire_errors.py)
//! and the broker keeps serving everyone else.

mod common;

use common::*;
use warren::Config;

/// Open a connection and channel 1, send `bytes`, expect a connection.close.
async fn conn_close_after(b: &warren::Broker, bytes: &[u8]) -> (u16, String, u16, u16) {
    let mut r = Raw::open(b).await;
    r.open_channel(1).await;
    r.send(bytes).await;
    let got = r.expect_connection_close().await;
    r.expect_eof().await;
    got
}

/// Same, expecting a channel.close on channel 1.
async fn chan_close_after(b: &warren::Broker, bytes: &[u8]) -> (u16, String, u16, u16) {
    let mut r = Raw::open(b).await;
    r.open_channel(1).await;
    r.send(bytes).await;
    let got = r.expect_channel_close(1).await;
    // The connection is still usable.
    r.open_channel(2).await;
    got
}

fn publish_method(ch: u16, flags: u8) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend_from_slice(&shortstr(b""));
    args.extend_from_slice(&shortstr(b"q"));
    args.push(flags);
    raw_method(ch, 60, 40, &args)
}

fn t(code: u16, text: &str, class: u16, method: u16) -> (u16, String, u16, u16) {
    (code, text.to_string(), class, method)
}

#[tokio::test]
async fn bad_protocol_headers_get_ours_back() {
    let b = start().await;
    for h in [
        &b"AMQP\x00\x00\x08\x00"[..],
        b"GET / HT",
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x01\x01\x08\x00",
    ] {
        let mut r = Raw::connect(&b).await;
        r.send(h).await;
        assert_eq!(r.read_to_eof().await, b"AMQP\x00\x00\x09\x01");
    }
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn framing_errors_are_501() {
    let b = start().await;
    let mut big = raw_frame(3, 1, &vec![0u8; 131073]);
    big.truncate(7); // the header alone is enough to refuse it
    assert_eq!(
        conn_close_after(&b, &big).await,
        t(
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,131073,131064}",
            0,
            0
        )
    );
    // A payload of exactly frame_max is accepted (RabbitMQ's 8-byte fudge).
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    // queue.declare "padded" with an arguments table sized so the payload is 131072 bytes:
    // class+method 4, ticket 2, name 7, flags 1, table length 4, entry header 10, value n.
    let n = 131072 - 28;
    let mut args = vec![0, 0];
    args.extend_from_slice(&shortstr(b"padded"));
    args.push(0);
    args.extend_from_slice(&((10 + n) as u32).to_be_bytes());
    args.extend_from_slice(&[4, b'p', b'a', b'd', b'x', b'S']);
    args.extend_from_slice(&(n as u32).to_be_bytes());
    args.extend(std::iter::repeat_n(b'z', n));
    let frame = raw_method(1, 50, 10, &args);
    assert_eq!(frame.len() - 8, 131072);
    r.send(&frame).await;
    r.expect_method(1, 50, 11).await;

    let mut bad_end = raw_method(1, 60, 10, &[0, 0, 0, 0, 0, 10, 0]);
    *bad_end.last_mut().unwrap() = 0;
    assert_eq!(
        conn_close_after(&b, &bad_end).await,
        t(
            501,
            &format!(
                "FRAME_ERROR - type 1, all octets = <<0,60,0,10,0,0,0,0,0,10,0>>: {{invalid_frame_end_marker,\n{}0}}",
                " ".repeat(52)
            ),
            0,
            0
        )
    );
    assert_eq!(
        conn_close_after(&b, &raw_frame(9, 0, b"abc")).await,
        t(
            501,
            "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame",
            0,
            0
        )
    );
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn wrong_state_frames() {
    let b = start().await;
    assert_eq!(
        conn_close_after(&b, &raw_frame(8, 1, b"")).await,
        t(505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0)
    );
    assert_eq!(
        conn_close_after(&b, &raw_method(5, 50, 10, &[0, 0, 1, b'q', 0, 0, 0, 0, 0])).await,
        t(504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    );
    assert_eq!(
        conn_close_after(&b, &raw_method(1, 20, 10, &[0])).await,
        t(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    );
    assert_eq!(
        conn_close_after(&b, &raw_method(0, 50, 10, &[0, 0, 1, b'q', 0, 0, 0, 0, 0])).await,
        t(
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            50,
            10
        )
    );
    assert_eq!(
        conn_close_after(&b, &raw_header(1, 5)).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
    assert_eq!(
        conn_close_after(&b, &raw_frame(3, 1, b"body")).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
    let mut v = publish_method(1, 0);
    v.extend_from_slice(&raw_method(1, 60, 10, &[0, 0, 0, 0, 0, 10, 0]));
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
    let mut v = publish_method(1, 0);
    v.extend_from_slice(&raw_header(1, 5));
    v.extend_from_slice(&raw_method(1, 60, 10, &[0, 0, 0, 0, 0, 10, 0]));
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
    let mut v = publish_method(1, 0);
    let mut h = raw_header(1, 0);
    h[8] = 50; // class id 50
    v.extend_from_slice(&h);
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40
        )
    );
    let mut v = publish_method(1, 0);
    let mut h = raw_header(1, 0);
    h[10] = 1; // weight 1
    v.extend_from_slice(&h);
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
    // A body longer than declared: accepted, then the next method is unexpected (RabbitMQ).
    let mut v = publish_method(1, 0);
    v.extend_from_slice(&raw_header(1, 5));
    v.extend_from_slice(&raw_frame(3, 1, b"0123456789"));
    v.extend_from_slice(&raw_method(1, 60, 10, &[0, 0, 0, 0, 0, 10, 0]));
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn channel_max_limits_open_channels() {
    let b = start().await;
    let mut r = Raw::open_with(
        &b,
        Tune {
            channel_max: 10,
            ..Tune::default()
        },
        "/",
    )
    .await;
    // Numbers above channel_max are fine (RabbitMQ counts channels, not numbers).
    r.open_channel(65535).await;
    for ch in 1..=9 {
        r.open_channel(ch).await;
    }
    r.send(&raw_method(11, 20, 10, &[0])).await;
    assert_eq!(
        r.expect_connection_close().await,
        t(
            530,
            "NOT_ALLOWED - number of channels opened (10) has reached the negotiated channel_max (10)",
            0,
            0
        )
    );
}

#[tokio::test]
async fn method_field_errors() {
    let b = start().await;
    assert_eq!(
        conn_close_after(&b, &raw_method(1, 60, 10, &[0, 0])).await,
        t(501, "FRAME_ERROR - cannot decode <<0,0>>", 60, 10)
    );
    assert_eq!(
        conn_close_after(&b, &raw_method(1, 60, 10, &[0, 0, 0, 1, 0, 10, 0])).await,
        t(540, "NOT_IMPLEMENTED - prefetch_size!=0 (1)", 60, 10)
    );
    assert_eq!(
        conn_close_after(
            &b,
            &raw_method(1, 50, 10, &[0, 0, 2, 0xff, 0xfe, 0, 0, 0, 0, 0])
        )
        .await,
        t(501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0)
    );
    let mut v = publish_method(1, 2);
    v.extend_from_slice(&raw_header(1, 0));
    assert_eq!(
        conn_close_after(&b, &v).await,
        t(540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    );
    assert_eq!(
        conn_close_after(&b, &raw_method(1, 20, 20, &[0])).await,
        t(540, "NOT_IMPLEMENTED - active=false", 20, 20)
    );
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn unknown_methods_drop_the_socket() {
    let b = start().await;
    for frame in [
        raw_method(1, 60, 255, &[]),
        raw_method(1, 99, 10, &[]),
        raw_method(0, 10, 99, &[]),
    ] {
        let mut r = Raw::open(&b).await;
        r.open_channel(1).await;
        r.send(&frame).await;
        assert_eq!(
            r.next().await,
            Reply::Eof,
            "RabbitMQ 3.10.8 closes without a close frame"
        );
    }
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn oversized_message_is_406_and_not_buffered() {
    let mut config = Config::for_tests();
    config.limits.max_message_size = 1000;
    let b = start_with(config).await;
    let mut v = publish_method(1, 0);
    v.extend_from_slice(&raw_header(1, 5000));
    v.extend_from_slice(&raw_frame(3, 1, &[1u8; 5000]));
    assert_eq!(
        chan_close_after(&b, &v).await,
        t(
            406,
            "PRECONDITION_FAILED - message size 5000 is larger than configured max size 1000",
            60,
            40
        )
    );
    // As RabbitMQ 3.10.8: nothing until the whole body is in (none of it is kept).
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let mut v = publish_method(1, 0);
    v.extend_from_slice(&raw_header(1, 5000));
    v.extend_from_slice(&raw_frame(3, 1, &[1u8; 4000]));
    r.send(&v).await;
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), r.next()).await;
    assert!(
        early.is_err(),
        "closed before the body was complete: {early:?}"
    );
    r.send(&raw_frame(3, 1, &[1u8; 1000])).await;
    assert_eq!(
        r.expect_channel_close(1).await,
        t(
            406,
            "PRECONDITION_FAILED - message size 5000 is larger than configured max size 1000",
            60,
            40
        )
    );
    assert_still_serving(&b).await;
}

#[tokio::test]
async fn garbage_after_handshake_and_truncated_frames() {
    let b = start().await;
    // Random bytes: type 0x47 ('G') is not a frame type.
    assert_eq!(conn_close_after(&b, b"GARBAGE-GARBAGE!").await.0, 501);
    // A truncated frame followed by EOF: the broker just cleans up.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&raw_method(1, 50, 10, &[0, 0, 1])[..9]).await;
    drop(r);
    assert_still_serving(&b).await;
}

/// A client's `connection.close` (any code) after publishes with confirms in the same write,
/// as RabbitMQ 3.10.8 answers it (recorded): every publish before it is routed, confirms
/// already owed come before close-ok, nothing comes after close-ok, frames after the close
/// are ignored, and the broker leaves closing the socket to the client.
#[tokio::test]
async fn client_connection_close_sequence() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, basic, confirm, connection as conn, queue as qu};
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let declare = |name: &str| {
        method_frame(
            1,
            AMQPClass::Queue(qu::AMQPMethod::Declare(qu::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            })),
        )
    };
    r.send(&declare("closing")).await;
    r.expect_method(1, 50, 11).await;
    r.send(&method_frame(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ))
    .await;
    r.expect_method(1, 85, 11).await;
    let mut bytes = Vec::new();
    for _ in 0..1000 {
        let mut args = vec![0, 0];
        args.extend_from_slice(&shortstr(b""));
        args.extend_from_slice(&shortstr(b"closing"));
        args.push(0);
        bytes.extend_from_slice(&raw_method(1, 60, 40, &args));
        bytes.extend_from_slice(&raw_header(1, 1));
        bytes.extend_from_slice(&raw_frame(3, 1, b"m"));
    }
    bytes.extend_from_slice(&method_frame(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
            reply_code: 541,
            reply_text: "INTERNAL_ERROR - oops".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    // Ignored: it comes after the close.
    bytes.extend_from_slice(&declare("after-close"));
    r.send(&bytes).await;
    loop {
        match r.next().await {
            Reply::Frame(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(_)))) => {}
            Reply::Frame(AMQPFrame::Method(
                0,
                AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)),
            )) => break,
            other => panic!("before close-ok: {other:?}"),
        }
    }
    // Nothing after close-ok, and the socket stays open for the client to close.
    let after = tokio::time::timeout(std::time::Duration::from_millis(300), r.next()).await;
    assert!(after.is_err(), "after close-ok: {after:?}");
    drop(r);
    let v = b.state().vhost("/").unwrap();
    assert_eq!(v.queue("closing").unwrap().message_count(), 1000);
    assert!(v.queue("after-close").is_err());
}

/// A client that sends its last frames and half-closes still gets every reply (the turn that
/// reads EOF is flushed); found by the `connection` fuzz target, where the login probe lost
/// its channel.open-ok when the open and the EOF were read in one turn.
#[tokio::test]
async fn replies_to_the_frames_before_a_half_close_are_sent() {
    use amq_protocol::protocol::{AMQPClass, channel as chan, queue as qu};
    let b = start().await;
    for _ in 0..20 {
        let mut r = Raw::open(&b).await;
        let mut bytes = method_frame(1, AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})));
        bytes.extend_from_slice(&method_frame(
            1,
            AMQPClass::Queue(qu::AMQPMethod::Declare(qu::Declare {
                queue: "".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            })),
        ));
        r.send(&bytes).await;
        tokio::io::AsyncWriteExt::shutdown(&mut r.sock)
            .await
            .unwrap();
        r.expect_method(1, 20, 11).await;
        r.expect_method(1, 50, 11).await;
        r.expect_eof().await;
    }
}
