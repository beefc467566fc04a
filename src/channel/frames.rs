//! Frames in: content assembly (method, then header, then bodies, RabbitMQ's
//! `rabbit_command_assembler` rules: what may follow what, sizes, oversized bodies counted and
//! not kept) and the closing channel's discarding; complete methods and messages go on to
//! [`dispatch`](super::dispatch).

use super::*;

impl Channel {
    /// A frame on this channel after we sent `channel.close`: everything but close and
    /// close-ok is discarded (RabbitMQ 3.10.8, observed), but content frames still follow the
    /// assembler's rules (a content header with no publish before it is a 505) and a second
    /// `channel.open` is a 504.
    pub(crate) fn closing_frame(&mut self, frame: &Frame) -> Result<Closing, Fault> {
        let unexpected = |text: &str| -> Fault { AmqpError::unexpected_frame(text).into() };
        match (&mut self.assembly, frame) {
            (
                Assembly::Method,
                Frame::Method {
                    class_id,
                    method_id,
                    ..
                },
            ) => match (*class_id, *method_id) {
                (20, 41) => Ok(Closing::Done),
                (20, 40) => Ok(Closing::Crossed),
                (20, 10) => Err(AmqpError::channel_error("second 'channel.open' seen")
                    .on(20, 10)
                    .into()),
                (60, 40) => {
                    self.assembly = Assembly::Discarding {
                        header: true,
                        remaining: 0,
                    };
                    Ok(Closing::Discard)
                }
                _ => Ok(Closing::Discard),
            },
            (Assembly::Method, _) => Err(unexpected(
                "expected method frame, got non method frame instead",
            )),
            (Assembly::Discarding { header: true, .. }, Frame::Header { body_size, .. }) => {
                if *body_size == 0 {
                    self.assembly = Assembly::Method;
                } else {
                    self.assembly = Assembly::Discarding {
                        header: false,
                        remaining: *body_size,
                    };
                }
                Ok(Closing::Discard)
            }
            (Assembly::Discarding { header: true, .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40)
            .into()),
            (Assembly::Discarding { remaining, .. }, Frame::Body { payload, .. }) => {
                *remaining = remaining.saturating_sub(payload.len() as u64);
                if *remaining == 0 {
                    self.assembly = Assembly::Method;
                }
                Ok(Closing::Discard)
            }
            (Assembly::Discarding { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            // Not reached: a closing channel's assembly is reset when it closes.
            _ => Ok(Closing::Discard),
        }
    }

    /// A content header after `basic.publish`: checked (class, weight, RabbitMQ's size limit,
    /// known here and refused once the body is in); an empty body publishes at once.
    fn on_header(
        &mut self,
        ctx: &mut ConnCtx,
        publish: Publish,
        (class_id, weight, body_size): (u16, u16, u64),
        properties: Bytes,
    ) -> Result<Outcome, Fault> {
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {class_id} instead"
            ))
            .on(60, 40)
            .into());
        }
        if weight != 0 {
            return Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40)
            .into());
        }
        let max = ctx.broker.config.limits.max_message_size;
        if body_size > max {
            // Known at the header, refused once the body is in: nothing of it is kept.
            self.assembly = Assembly::Oversized {
                body_size,
                remaining: body_size,
            };
            return Ok(Outcome::Open);
        }
        if body_size == 0 {
            self.on_publish(ctx, publish, properties, Bytes::new(), true)
                .map_err(|e| e.on_if_unset(60, 40))?;
        } else {
            self.assembly = Assembly::Body(Partial {
                publish,
                properties,
                body_size,
                parts: Vec::new(),
                remaining: body_size,
            });
        }
        Ok(Outcome::Open)
    }

    /// A body frame: kept until the body is complete, then published; the bytes held count
    /// toward the memory alarm meanwhile.
    fn on_body(
        &mut self,
        ctx: &mut ConnCtx,
        mut p: Partial,
        payload: Bytes,
    ) -> Result<Outcome, Fault> {
        let len = payload.len() as u64;
        if p.remaining == u64::MAX {
            // An overflowed body (see below): discard until the client sends a method.
            self.assembly = Assembly::Body(p);
            return Ok(Outcome::Open);
        }
        if len > p.remaining {
            // RabbitMQ 3.10.8 accepts the frame and keeps waiting for a body that can never
            // complete: the next method is then a 505. Do the same, keeping nothing more in
            // memory.
            let earlier = p.body_size - p.remaining;
            self.hold(ctx, -(earlier as i64));
            self.assembly = Assembly::Body(Partial {
                publish: p.publish,
                properties: Bytes::new(),
                body_size: p.body_size,
                parts: Vec::new(),
                remaining: u64::MAX,
            });
            return Ok(Outcome::Open);
        }
        p.remaining -= len;
        if len > 0 {
            p.parts.push(payload);
        }
        if p.remaining == 0 {
            // What earlier frames of this body held is released now.
            let earlier = p.body_size - len;
            self.hold(ctx, -(earlier as i64));
            let body_own = p.parts.len() > 1;
            let body = join(p.parts, p.body_size as usize);
            self.on_publish(ctx, p.publish, p.properties, body, body_own)
                .map_err(|e| e.on_if_unset(60, 40))?;
        } else {
            self.hold(ctx, len as i64);
            self.assembly = Assembly::Body(p);
        }
        Ok(Outcome::Open)
    }

    /// Handle one frame on this (open) channel.
    pub(crate) fn handle_frame(
        &mut self,
        ctx: &mut ConnCtx,
        frame: Frame,
    ) -> Result<Outcome, Fault> {
        match (
            std::mem::replace(&mut self.assembly, Assembly::Method),
            frame,
        ) {
            (
                Assembly::Method,
                Frame::Method {
                    class_id,
                    method_id,
                    payload,
                    ..
                },
            ) => {
                let m = decode_method(class_id, method_id, &payload)?;
                self.handle_method(ctx, m, class_id, method_id)
                    .map_err(|e| Fault::Amqp(e.on_if_unset(class_id, method_id)))
            }
            (Assembly::Method, _) => Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into()),
            (
                Assembly::Header(publish),
                Frame::Header {
                    class_id,
                    weight,
                    body_size,
                    properties,
                    ..
                },
            ) => self.on_header(ctx, publish, (class_id, weight, body_size), properties),
            (Assembly::Header(_), _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40)
            .into()),
            (Assembly::Body(partial), Frame::Body { payload, .. }) => {
                self.on_body(ctx, partial, payload)
            }
            (Assembly::Body(_), _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            (
                Assembly::Oversized {
                    body_size,
                    remaining,
                },
                Frame::Body { payload, .. },
            ) => {
                let len = payload.len() as u64;
                if len < remaining {
                    self.assembly = Assembly::Oversized {
                        body_size,
                        remaining: remaining - len,
                    };
                    return Ok(Outcome::Open);
                }
                let max = ctx.broker.config.limits.max_message_size;
                Err(AmqpError::precondition_failed(format!(
                    "message size {body_size} is larger than configured max size {max}"
                ))
                .on(60, 40)
                .into())
            }
            (Assembly::Oversized { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            // Only a closing channel discards (see `closing_frame`); an open one never is.
            (Assembly::Discarding { .. }, _) => Ok(Outcome::Open),
        }
    }
}

/// Join body frames; a single frame is passed through without a copy (a message that may stay
/// in a queue is re-homed later, see [`crate::message::Message::rehome`]); several are copied
/// into one allocation of exactly their size, which the message keeps as it is.
pub(super) fn join(mut parts: Vec<Bytes>, size: usize) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(size);
            for p in parts {
                b.extend_from_slice(&p);
            }
            b.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::join;
    use bytes::Bytes;

    #[test]
    fn a_single_frame_passes_through_and_frames_are_joined_into_a_body_of_its_own() {
        let read = Bytes::from(vec![3u8; 200_000]);
        let small = read.slice(..10);
        assert_eq!(join(vec![small.clone()], 10).as_ptr(), small.as_ptr());
        let large = read.slice(..131_064);
        assert_eq!(
            join(vec![large.clone()], large.len()).as_ptr(),
            large.as_ptr()
        );
        let parts = vec![read.slice(..4), read.slice(4..8)];
        let joined = join(parts, 8);
        assert_eq!(&joined[..], &[3u8; 8][..]);
        assert!(joined.is_unique());
    }
}
