//! A channel without a socket: frames in, frames and effects out (quinn's style of testing a
//! protocol state machine). One channel (number 1) on a connection context over an in-memory
//! broker; what the connection task would do around `Channel::handle_frame` (close the channel
//! on a soft error, answer the close handshake, hand deliveries and store confirmations back) is
//! done here in a few lines, so unit tests and the `channel` fuzz target drive the real state
//! machine with no network and no timers.

use super::{Channel, ChannelState, Closing, ConnCtx, Fault, Outcome};
use crate::auth::{Access, Auth};
use crate::config::Config;
use crate::protocol::codec::{CodecError, Frame, FrameCodec, put_method};
use crate::queue::consumer::ConnEvent;
use crate::state::BrokerState;
use crate::vhost::VHost;
use amq_protocol::protocol::{AMQPClass, channel as chan};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// What became of the connection after the input.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Still open (the channel may have been closed and reopened).
    Open,
    /// A connection-level error (`connection.close` was queued) or a frame the connection
    /// drops the socket for.
    Closed,
}

/// One channel over an in-memory broker, driven by frames.
pub struct ChannelHarness {
    ctx: ConnCtx,
    channel: Option<Channel>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    state: State,
}

impl ChannelHarness {
    /// A fresh in-memory broker (`/`, user guest with all permissions) and channel 1, open.
    /// Needs a tokio runtime (queues start timers).
    pub fn new() -> ChannelHarness {
        let config = Config::for_tests();
        let auth = Auth::open(&config).expect("in-memory auth");
        let user = auth.user("guest").expect("guest is seeded");
        let access = Access::new(&auth, user, "/");
        let vhost = VHost::new("/");
        let vhosts = dashmap::DashMap::new();
        vhosts.insert("/".to_string(), vhost.clone());
        let broker = Arc::new(BrokerState::new(config, vhosts, auth));
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = ConnCtx {
            broker,
            id: 1,
            peer: "127.0.0.1:1".parse().expect("address"),
            user: "guest".into(),
            access,
            vhost,
            frame_max: 131072,
            out: BytesMut::new(),
            exclusive_queues: Vec::new(),
            events: tx,
            backlog: Default::default(),
            cancel_notify: true,
            blocked_notify: true,
            published: false,
            topology_changed: false,
            confirms_dirty: Vec::new(),
            clock: None,
            timeout_check: None,
        };
        ChannelHarness {
            ctx,
            channel: Some(Channel::new(1)),
            events: rx,
            state: State::Open,
        }
    }

    /// Whether the connection is still usable.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Feed one frame, as the connection task would after reading it; then hand back whatever
    /// queues and the store sent the connection meanwhile.
    pub fn feed(&mut self, frame: Frame) {
        if self.state == State::Closed {
            return;
        }
        match self.channel.as_mut() {
            None => self.reopen(frame),
            Some(ch) if ch.state == ChannelState::Closing => match ch.closing_frame(&frame) {
                Ok(Closing::Done) => self.channel = None,
                Ok(Closing::Crossed) => self.ctx.send_method(
                    1,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                ),
                Ok(Closing::Discard) => {}
                Err(_) => self.state = State::Closed,
            },
            Some(ch) => match ch.handle_frame(&mut self.ctx, frame) {
                Ok(Outcome::Open) => {}
                Ok(Outcome::Closed) => self.channel = None,
                Err(Fault::Drop(_)) => self.state = State::Closed,
                Err(Fault::Amqp(e)) if e.closes_connection() => self.state = State::Closed,
                Err(Fault::Amqp(e)) => {
                    ch.release(&mut self.ctx);
                    ch.state = ChannelState::Closing;
                    self.ctx.send_method(
                        1,
                        AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                            reply_code: e.code.code(),
                            reply_text: e.short_text().into(),
                            class_id: e.class_id,
                            method_id: e.method_id,
                        })),
                    );
                }
            },
        }
        self.pump();
    }

    /// Feed raw bytes as they would come off the socket (after the handshake): frames are
    /// decoded with the connection's codec; a framing error closes the connection.
    pub fn feed_bytes(&mut self, bytes: &[u8]) {
        let mut codec = FrameCodec {
            frame_max: self.ctx.frame_max,
        };
        let mut buf = BytesMut::from(bytes);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => self.feed(f),
                Ok(None) => return,
                Err(CodecError::Protocol(_)) | Err(CodecError::Io(_)) => {
                    self.state = State::Closed;
                    return;
                }
            }
            if self.state == State::Closed {
                return;
            }
        }
    }

    /// A closed channel comes back only with `channel.open`; anything else on it is the
    /// connection's 504 (a hard error).
    fn reopen(&mut self, frame: Frame) {
        match frame {
            Frame::Method {
                class_id: 20,
                method_id: 10,
                ..
            } => {
                self.channel = Some(Channel::new(1));
                self.ctx.send_method(
                    1,
                    AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                );
            }
            _ => self.state = State::Closed,
        }
    }

    /// Deliveries, cancels and store confirmations go back into the channel; confirms owed
    /// are flushed (the end of a connection loop turn).
    fn pump(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match (ev, self.channel.as_mut()) {
                (ConnEvent::Deliver(d), Some(ch)) => ch.deliver(&mut self.ctx, d),
                (ConnEvent::Deliver(d), None) => d.bounce(),
                (ConnEvent::Synced { seq, ok, .. }, Some(ch)) => ch.synced(&mut self.ctx, seq, ok),
                (ConnEvent::Cancelled { tag, .. }, Some(ch)) => {
                    ch.server_cancel(&mut self.ctx, &tag)
                }
                _ => {}
            }
        }
        if let Some(ch) = self.channel.as_mut() {
            ch.flush_confirms(&mut self.ctx);
        }
    }

    /// Take the frames queued so far (encoded, as they would be written to the socket).
    pub fn take_output(&mut self) -> BytesMut {
        std::mem::take(&mut self.ctx.out)
    }

    /// Queue a method frame as a client would send it, encoded, and feed it.
    pub fn feed_method(&mut self, m: AMQPClass) {
        let mut b = BytesMut::new();
        put_method(&mut b, 1, m);
        self.feed_bytes(&b);
    }

    /// Messages ready in `queue` of the in-memory vhost (`None`: no such queue).
    pub fn ready(&self, queue: &str) -> Option<u32> {
        self.ctx.vhost.queues.get(queue).map(|q| q.message_count())
    }
}

impl Default for ChannelHarness {
    fn default() -> Self {
        ChannelHarness::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{basic, confirm, queue};

    /// Every frame in `out`.
    fn frames(out: &[u8]) -> Vec<AMQPFrame> {
        let mut rest = out;
        let mut v = Vec::new();
        while !rest.is_empty() {
            let (r, f) = parse_frame(rest).expect("the channel writes valid frames");
            v.push(f);
            rest = r;
        }
        v
    }

    fn methods(out: &[u8]) -> Vec<AMQPClass> {
        frames(out)
            .into_iter()
            .filter_map(|f| match f {
                AMQPFrame::Method(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn publish(h: &mut ChannelHarness, exchange: &str, key: &str, body: &[u8]) {
        let mut b = BytesMut::new();
        put_method(
            &mut b,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        // Properties: flags 0 (none); the codec writes the header and body frames.
        crate::protocol::codec::put_content(&mut b, 1, &[0, 0], body, 131072);
        h.feed_bytes(&b);
    }

    fn declare(h: &mut ChannelHarness, name: &str) {
        h.feed_method(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            },
        )));
    }

    #[tokio::test]
    async fn declare_publish_get_without_a_socket() {
        let mut h = ChannelHarness::new();
        declare(&mut h, "q");
        assert!(matches!(
            methods(&h.take_output())[..],
            [AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))]
        ));
        publish(&mut h, "", "q", b"hello");
        assert_eq!(h.ready("q"), Some(1));
        assert!(
            h.take_output().is_empty(),
            "a publish without confirms answers nothing"
        );
        h.feed_method(AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "q".into(),
            no_ack: true,
        })));
        let out = frames(&h.take_output());
        assert!(matches!(
            out[0],
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
        ));
        assert!(matches!(&out[2], AMQPFrame::Body(1, b) if b == b"hello"));
        assert_eq!(h.ready("q"), Some(0));
    }

    #[tokio::test]
    async fn a_soft_error_closes_the_channel_until_close_ok_then_it_reopens() {
        let mut h = ChannelHarness::new();
        publish(&mut h, "missing", "k", b"x");
        let m = methods(&h.take_output());
        let [AMQPClass::Channel(chan::AMQPMethod::Close(c))] = &m[..] else {
            panic!("{m:?}")
        };
        assert_eq!(c.reply_code, 404);
        assert_eq!(
            c.reply_text.as_str(),
            "NOT_FOUND - no exchange 'missing' in vhost '/'"
        );
        // Discarded while closing, whole contents included.
        declare(&mut h, "q");
        publish(&mut h, "", "q", b"dropped");
        assert!(h.take_output().is_empty());
        assert_eq!(h.ready("q"), None);
        h.feed_method(AMQPClass::Channel(chan::AMQPMethod::CloseOk(
            chan::CloseOk {},
        )));
        h.feed_method(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})));
        assert!(matches!(
            methods(&h.take_output())[..],
            [AMQPClass::Channel(chan::AMQPMethod::OpenOk(_))]
        ));
        declare(&mut h, "q");
        assert_eq!(h.ready("q"), Some(0));
        assert_eq!(*h.state(), State::Open);
    }

    #[tokio::test]
    async fn confirms_are_flushed_at_the_end_of_the_turn() {
        let mut h = ChannelHarness::new();
        h.feed_method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )));
        declare(&mut h, "q");
        h.take_output();
        publish(&mut h, "", "q", b"1");
        publish(&mut h, "", "q", b"2");
        let acks: Vec<(u64, bool)> = methods(&h.take_output())
            .into_iter()
            .filter_map(|m| match m {
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => Some((a.delivery_tag, a.multiple)),
                _ => None,
            })
            .collect();
        assert_eq!(acks.last().map(|a| a.0), Some(2), "{acks:?}");
    }

    #[tokio::test]
    async fn a_hard_error_closes_the_connection() {
        let mut h = ChannelHarness::new();
        // A content header with no publish before it: 505 UNEXPECTED_FRAME, a connection error.
        let mut b = BytesMut::new();
        crate::protocol::codec::put_content(&mut b, 1, &[0, 0], b"x", 131072);
        h.feed_bytes(&b);
        assert_eq!(*h.state(), State::Closed);
    }
}
