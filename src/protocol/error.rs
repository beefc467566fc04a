//! AMQP errors a client can cause, with their reply code and scope.
//!
//! Every error a peer can trigger becomes an [`AmqpError`]; the connection task maps it to a
//! `channel.close` (soft) or `connection.close` (hard) in exactly one place. Reply texts follow
//! RabbitMQ's style: `NOT_FOUND - no queue 'q' in vhost '/'`.

use std::fmt;

/// AMQP 0-9-1 reply codes used by Warren (RabbitMQ's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyCode {
    /// 200
    ReplySuccess = 200,
    /// 311
    ContentTooLarge = 311,
    /// 312
    NoRoute = 312,
    /// 313
    NoConsumers = 313,
    /// 320
    ConnectionForced = 320,
    /// 402
    InvalidPath = 402,
    /// 403
    AccessRefused = 403,
    /// 404
    NotFound = 404,
    /// 405
    ResourceLocked = 405,
    /// 406
    PreconditionFailed = 406,
    /// 501
    FrameError = 501,
    /// 502
    SyntaxError = 502,
    /// 503
    CommandInvalid = 503,
    /// 504
    ChannelError = 504,
    /// 505
    UnexpectedFrame = 505,
    /// 506
    ResourceError = 506,
    /// 530
    NotAllowed = 530,
    /// 540
    NotImplemented = 540,
    /// 541
    InternalError = 541,
}

impl ReplyCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// RabbitMQ's text name (`NOT_FOUND`), the prefix of every reply text.
    pub fn name(self) -> &'static str {
        use ReplyCode::*;
        match self {
            ReplySuccess => "OK",
            ContentTooLarge => "CONTENT_TOO_LARGE",
            NoRoute => "NO_ROUTE",
            NoConsumers => "NO_CONSUMERS",
            ConnectionForced => "CONNECTION_FORCED",
            InvalidPath => "INVALID_PATH",
            AccessRefused => "ACCESS_REFUSED",
            NotFound => "NOT_FOUND",
            ResourceLocked => "RESOURCE_LOCKED",
            PreconditionFailed => "PRECONDITION_FAILED",
            FrameError => "FRAME_ERROR",
            SyntaxError => "SYNTAX_ERROR",
            CommandInvalid => "COMMAND_INVALID",
            ChannelError => "CHANNEL_ERROR",
            UnexpectedFrame => "UNEXPECTED_FRAME",
            ResourceError => "RESOURCE_ERROR",
            NotAllowed => "NOT_ALLOWED",
            NotImplemented => "NOT_IMPLEMENTED",
            InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft errors close only the channel (AMQP 0-9-1 spec
    /// classification, which RabbitMQ follows).
    pub fn is_hard(self) -> bool {
        use ReplyCode::*;
        matches!(
            self,
            ConnectionForced
                | InvalidPath
                | FrameError
                | SyntaxError
                | CommandInvalid
                | ChannelError
                | UnexpectedFrame
                | ResourceError
                | NotAllowed
                | NotImplemented
                | InternalError
        )
    }
}

/// An error caused by a peer, carrying everything needed to build the close method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    /// Reply code.
    pub code: ReplyCode,
    /// Full reply text, `NAME - detail`.
    pub text: String,
    /// Class of the offending method (0 if none).
    pub class_id: u16,
    /// Method of the offending method (0 if none).
    pub method_id: u16,
    /// Force a connection close even for a soft code (e.g. 403 during the handshake).
    pub connection_level: bool,
    /// The class/method ids were set explicitly (RabbitMQ sends 0/0 for some errors).
    pub located: bool,
}

impl AmqpError {
    /// Build an error with RabbitMQ's `NAME - detail` text.
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", code.name(), detail),
            class_id: 0,
            method_id: 0,
            connection_level: false,
            located: false,
        }
    }

    /// An error whose text is the bare code name (RabbitMQ's `INTERNAL_ERROR` after a
    /// channel process crash).
    pub fn bare(code: ReplyCode) -> Self {
        AmqpError {
            text: code.name().to_string(),
            ..AmqpError::new(code, "")
        }
    }

    /// Attach the class and method id of the method that caused the error.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self.located = true;
        self
    }

    /// Attach the method id only where none was set yet.
    pub fn on_if_unset(self, class_id: u16, method_id: u16) -> Self {
        if !self.located {
            self.on(class_id, method_id)
        } else {
            self
        }
    }

    /// Make this error close the connection whatever its code.
    pub fn connection(mut self) -> Self {
        self.connection_level = true;
        self
    }

    /// Whether this error closes the whole connection.
    pub fn closes_connection(&self) -> bool {
        self.connection_level || self.code.is_hard()
    }

    /// The text after `NAME - ` (the management API shows it so).
    pub fn detail(&self) -> &str {
        self.text
            .split_once(" - ")
            .map_or(self.text.as_str(), |(_, d)| d)
    }

    /// Reply text truncated to a valid shortstr (255 bytes, on a char boundary).
    pub fn short_text(&self) -> String {
        truncate_shortstr(&self.text)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.code(), self.text)
    }
}

impl std::error::Error for AmqpError {}

/// Truncate a string to at most 255 bytes on a char boundary (shortstr limit).
pub fn truncate_shortstr(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_string();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Shorthand constructors in RabbitMQ's vocabulary.
macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl AmqpError {
            $(
                #[doc = concat!("A `", stringify!($code), "` error.")]
                pub fn $name(detail: impl fmt::Display) -> Self { Self::new(ReplyCode::$code, detail) }
            )*
        }
    };
}
ctor! {
    access_refused => AccessRefused,
    not_found => NotFound,
    resource_locked => ResourceLocked,
    precondition_failed => PreconditionFailed,
    frame_error => FrameError,
    syntax_error => SyntaxError,
    command_invalid => CommandInvalid,
    channel_error => ChannelError,
    unexpected_frame => UnexpectedFrame,
    resource_error => ResourceError,
    not_allowed => NotAllowed,
    not_implemented => NotImplemented,
    internal_error => InternalError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_style_matches_rabbitmq() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").on(50, 10);
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!(e.code.code(), 404);
        assert!(!e.closes_connection());
        assert!(AmqpError::frame_error("x").closes_connection());
        assert!(
            AmqpError::access_refused("x")
                .connection()
                .closes_connection()
        );
    }

    #[test]
    fn shortstr_truncation_respects_char_boundaries() {
        let s = "é".repeat(200);
        let t = truncate_shortstr(&s);
        assert!(t.len() <= 255);
        assert!(s.starts_with(&t));
    }
}
