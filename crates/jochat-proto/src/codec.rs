//! The codec used by every generated method.
//!
//! It is prost's codec with one change: a message that cannot be decoded is reported as
//! `INVALID_ARGUMENT` rather than `INTERNAL`. A request with invalid UTF-8 in a string field,
//! or a truncated frame, is the caller's mistake; the message names the field, for example
//! `request could not be decoded: SendMessageRequest.content: invalid string value: data is
//! not UTF-8 encoded`.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost's codec, with decode failures reported as `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
pub struct JoChatCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for JoChatCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for JoChatCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = JoChatDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        JoChatDecoder {
            inner: ProstCodec::<T, U>::default().decoder(),
        }
    }
}

/// Prost's decoder, with decode failures reported as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct JoChatDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for JoChatDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(src).map_err(|status| {
            if status.code() == Code::Internal {
                let detail = status
                    .message()
                    .trim_start_matches("failed to decode Protobuf message: ");
                Status::invalid_argument(format!("request could not be decoded: {detail}"))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
