//! PostgreSQL wire protocol 3.0 messages: enough structure to frame every message, read the
//! few Sluice looks inside, and build the ones it sends itself. Every length is checked
//! before anything is allocated for it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use sluice_core::frame::{CellFormat, Column};

/// No message may be larger: far above any real statement or row, far below what would let
/// a broken or hostile peer make the gateway allocate without bound.
pub const MAX_MESSAGE: usize = 64 << 20;
/// What one side's reader and writer buffer at a time.
pub const BUFFER: usize = 64 << 10;
/// Startup packets carry a few parameters; PostgreSQL itself allows 10,000 bytes.
pub const MAX_STARTUP: usize = 10_000;

pub const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// One message after startup: a tag byte and its body (the length is implied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    pub fn new(tag: u8, body: Vec<u8>) -> Message {
        Message { tag, body }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.tag);
        out.extend_from_slice(&(self.body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn reader(&self) -> Body<'_> {
        Body(&self.body)
    }
}

/// The first thing a client sends.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Start { params: Vec<(String, String)> },
}

pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Startup, Error> {
    let len = read_i32(r).await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(Error::Malformed(format!(
            "a startup packet of {len} bytes (this is a PostgreSQL port: is the client speaking \
             PostgreSQL?)"
        )));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    let mut b = Body(&body);
    let code = b.i32()?;
    Ok(match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => Startup::Cancel {
            pid: b.i32()?,
            secret: b.i32()?,
        },
        PROTOCOL_3 => {
            let mut params = Vec::new();
            loop {
                let key = b.cstr()?;
                if key.is_empty() {
                    break;
                }
                params.push((key, b.cstr()?));
            }
            Startup::Start { params }
        }
        other => {
            return Err(Error::Malformed(format!(
                "unsupported protocol version {}.{}",
                other >> 16,
                other & 0xffff
            )));
        }
    })
}

/// Reads one tagged message; `Error::Closed` on a clean end between messages.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, Error> {
    read_bounded(r, MAX_MESSAGE).await
}

/// Reads one tagged message of at most `max` bytes: a longer one is refused before any of
/// its body is read (what a client may send before it authenticated is small).
pub async fn read_bounded<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Message, Error> {
    let mut tag = [0u8; 1];
    if r.read(&mut tag).await? == 0 {
        return Err(Error::Closed);
    }
    let len = read_i32(r).await?;
    if len < 4 || len as usize - 4 > max {
        return Err(Error::Malformed(format!(
            "a '{}' message declares {len} bytes (the limit is {max})",
            tag[0].escape_ascii()
        )));
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(Message { tag: tag[0], body })
}

async fn read_i32<R: AsyncRead + Unpin>(r: &mut R) -> Result<i32, Error> {
    let mut b = [0u8; 4];
    match r.read_exact(&mut b).await {
        Ok(_) => Ok(i32::from_be_bytes(b)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Closed),
        Err(e) => Err(e.into()),
    }
}

pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, messages: &[Message]) -> Result<(), Error> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out);
    }
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// A startup packet (client side, toward the upstream server).
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        put_cstr(&mut body, k);
        put_cstr(&mut body, v);
    }
    body.push(0);
    let mut out = (body.len() as i32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `SSLRequest` toward the upstream server.
pub fn ssl_request() -> Vec<u8> {
    let mut out = 8i32.to_be_bytes().to_vec();
    out.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

/// A cancel request toward the upstream server.
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

pub fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// `ErrorResponse` (`tag` `E`) or `NoticeResponse` (`N`) with the fields psql shows.
pub fn error(tag: u8, severity: &str, code: &str, message: &str) -> Message {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        put_cstr(&mut body, value);
    }
    body.push(0);
    Message::new(tag, body)
}

/// The fields of an `ErrorResponse` or `NoticeResponse`: (field type, value).
pub fn fields(m: &Message) -> Result<Vec<(u8, String)>, Error> {
    let mut body = m.reader();
    let mut fields = Vec::new();
    loop {
        match body.u8()? {
            0 => return Ok(fields),
            tag => fields.push((tag, body.cstr()?)),
        }
    }
}

pub fn auth(code: i32, data: &[u8]) -> Message {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    Message::new(b'R', body)
}

pub fn ready_for_query(status: u8) -> Message {
    Message::new(b'Z', vec![status])
}

pub fn backend_key_data(pid: i32, secret: i32) -> Message {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(&secret.to_be_bytes());
    Message::new(b'K', body)
}

pub fn query(text: &str) -> Message {
    let mut body = Vec::new();
    put_cstr(&mut body, text);
    Message::new(b'Q', body)
}

/// A cursor over a message body; every read checks what is left.
pub struct Body<'a>(pub &'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("a message ends early".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, Error> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Error> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count (of fields, parameters, format codes): never negative.
    pub fn count(&mut self) -> Result<usize, Error> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| Error::Malformed(format!("a negative count ({n})")))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        self.take(n)
    }

    pub fn cstr(&mut self) -> Result<String, Error> {
        let end = memchr_zero(self.0)
            .ok_or_else(|| Error::Malformed("a string without its terminating NUL".into()))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// A length-prefixed value (`-1` is NULL).
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, Error> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::Malformed(format!("a value of length {len}")))?;
        self.take(len).map(Some)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

fn memchr_zero(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

pub fn put_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}

/// A row's cells, or a call's arguments: `None` is SQL NULL.
pub type Cells = Vec<Option<Vec<u8>>>;

/// A `Bind`: a portal made from a prepared statement, with its parameters and the formats
/// its results come back in.
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub params: Cells,
    pub formats: Vec<i16>,
}

pub fn bind(body: &mut Body<'_>) -> Result<Bind, Error> {
    let portal = body.cstr()?;
    let statement = body.cstr()?;
    let n = body.count()?;
    let mut param_formats = Vec::with_capacity(n);
    for _ in 0..n {
        param_formats.push(body.i16()?);
    }
    let n = body.count()?;
    let mut params = Vec::with_capacity(n);
    for _ in 0..n {
        params.push(body.value()?.map(<[u8]>::to_vec));
    }
    let n = body.count()?;
    let mut formats = Vec::with_capacity(n);
    for _ in 0..n {
        formats.push(body.i16()?);
    }
    Ok(Bind {
        portal,
        statement,
        params,
        formats,
    })
}

/// A fast-path `FunctionCall`: the function's OID and its arguments.
pub fn function_call(m: &Message) -> Result<(i32, Cells), Error> {
    let mut body = m.reader();
    let oid = body.i32()?;
    let n = body.count()?;
    for _ in 0..n {
        body.i16()?;
    }
    let n = body.count()?;
    let mut params = Vec::with_capacity(n);
    for _ in 0..n {
        params.push(body.value()?.map(<[u8]>::to_vec));
    }
    Ok((oid, params))
}

/// The columns a `RowDescription` describes (their tables still unnamed).
pub fn row_description(m: &Message) -> Result<Vec<Column>, Error> {
    let mut body = m.reader();
    let n = body.count()?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let name = body.cstr()?;
        let table_oid = body.i32()? as u32;
        let _attnum = body.i16()?;
        let type_oid = body.i32()? as u32;
        let _len = body.i16()?;
        let _typmod = body.i32()?;
        let format = body.i16()?;
        columns.push(Column {
            name,
            table: None,
            table_oid,
            type_oid,
            format: if format == 0 {
                CellFormat::Text
            } else {
                CellFormat::Binary
            },
        });
    }
    Ok(columns)
}

/// The cells of a `DataRow`.
pub fn data_row_cells(m: &Message) -> Result<Cells, Error> {
    let mut body = m.reader();
    let n = body.count()?;
    let mut cells = Vec::with_capacity(n);
    for _ in 0..n {
        cells.push(body.value()?.map(<[u8]>::to_vec));
    }
    // Nothing may follow the last value: a row goes on as read when no plugin changed it,
    // so bytes the chain never saw would reach the client with it.
    if !body.rest().is_empty() {
        return Err(Error::Malformed(format!(
            "{} bytes after a DataRow's last value",
            body.rest().len()
        )));
    }
    Ok(cells)
}

/// A `DataRow` of `cells`.
pub fn data_row(cells: &[Option<Vec<u8>>]) -> Message {
    let mut body = (cells.len() as i16).to_be_bytes().to_vec();
    for cell in cells {
        put_value(&mut body, cell.as_deref());
    }
    Message::new(b'D', body)
}

/// The cells of a text-format `COPY` line: tab-separated, `\\N` for NULL.
pub fn copy_text_cells(line: &[u8]) -> Cells {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.split(|&b| b == b'\t')
        .map(|cell| (cell != b"\\N").then(|| cell.to_vec()))
        .collect()
}

/// A text-format `COPY` line of `cells`.
pub fn copy_text_line(cells: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut line = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push(b'\t');
        }
        line.extend_from_slice(cell.as_deref().unwrap_or(b"\\N"));
    }
    line.push(b'\n');
    line
}

/// Writes out and empties `queued`.
pub async fn drain<W: AsyncWrite + Unpin>(w: &mut W, queued: &mut Vec<u8>) -> Result<(), Error> {
    if !queued.is_empty() {
        w.write_all(queued).await?;
        queued.clear();
    }
    Ok(())
}

/// Messages from one side, read into a buffer. `fill` may be abandoned by a `select!`
/// without losing anything (it only appends what one read returned); `next` takes whole
/// messages out.
pub struct Inbound<R> {
    from: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    pub fn new(from: R) -> Self {
        Inbound {
            from,
            buf: Vec::with_capacity(BUFFER),
            start: 0,
        }
    }

    /// The next whole message already read, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        let avail = &self.buf[self.start..];
        if avail.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([avail[1], avail[2], avail[3], avail[4]]);
        if len < 4 || len as usize - 4 > MAX_MESSAGE {
            return Err(Error::Malformed(format!(
                "a '{}' message declares {len} bytes (the limit is {})",
                avail[0].escape_ascii(),
                MAX_MESSAGE
            )));
        }
        let total = 1 + len as usize;
        if avail.len() < total {
            self.buf.reserve(total - avail.len());
            return Ok(None);
        }
        let m = Message::new(avail[0], avail[5..total].to_vec());
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(m))
    }

    /// Reads what the peer sent next; `Closed` at its end.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub async fn fill(&mut self) -> Result<(), Error> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < BUFFER / 4 {
            self.buf.reserve(BUFFER);
        }
        match self.from.read_buf(&mut self.buf).await? {
            0 => Err(Error::Closed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_copy_lines_decode_what_they_encode_with_nulls() {
        let cells = vec![Some(b"1".to_vec()), None, Some(b"".to_vec())];
        assert_eq!(data_row_cells(&data_row(&cells)).unwrap(), cells);
        let line = copy_text_line(&cells);
        assert_eq!(line, b"1\t\\N\t\n");
        assert_eq!(copy_text_cells(&line), cells);
        // A row that declares more cells than it carries is malformed, not a panic.
        let mut short = data_row(&cells);
        short.body.truncate(short.body.len() - 4);
        assert!(data_row_cells(&short).is_err());
        // ...and so is one with bytes after its last cell, which no cell would carry.
        let mut long = data_row(&cells);
        long.body.extend_from_slice(b"hidden");
        assert!(data_row_cells(&long).is_err());
    }

    #[tokio::test]
    async fn inbound_yields_whole_messages_and_refuses_absurd_lengths() {
        let mut bytes = Vec::new();
        query("SELECT 1").encode_into(&mut bytes);
        let (first, rest) = bytes.split_at(3);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut inbound = Inbound::new(server);
        client.write_all(first).await.unwrap();
        inbound.fill().await.unwrap();
        assert!(
            inbound.next_message().unwrap().is_none(),
            "half a message is not a message"
        );
        client.write_all(rest).await.unwrap();
        inbound.fill().await.unwrap();
        assert_eq!(inbound.next_message().unwrap(), Some(query("SELECT 1")));

        client
            .write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        inbound.fill().await.unwrap();
        assert!(matches!(inbound.next_message(), Err(Error::Malformed(_))));
        drop(client);
    }

    #[tokio::test]
    async fn startup_packets_and_absurd_lengths() {
        let packet = startup(&[("user", "alice"), ("database", "app")]);
        let parsed = read_startup(&mut packet.as_slice()).await.unwrap();
        assert_eq!(
            parsed,
            Startup::Start {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
        let http = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let err = read_startup(&mut http.as_slice()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("is the client speaking PostgreSQL"),
            "{err}"
        );

        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        let err = read(&mut huge.as_slice()).await.unwrap_err();
        assert!(
            err.to_string().contains("declares 2147483647 bytes"),
            "{err}"
        );
    }

    #[test]
    fn bodies_refuse_to_read_past_their_end() {
        let mut b = Body(&[0, 0, 0, 9, b'x']);
        assert!(b.value().is_err());
        let mut b = Body(b"no nul");
        assert!(b.cstr().is_err());
        let mut b = Body(&[0xff, 0xff]);
        assert!(b.count().is_err());
    }
}
