//! Reading PyTorch's `torch.save` files (`.pth`, `.pt`, `.bin`: torchvision's published
//! checkpoints) in Rust, without Python: the file is a zip archive (stored entries) holding
//! `ARCHIVE/data.pkl`, a pickle that names each tensor's storage, and one raw little-endian file
//! per storage, `ARCHIVE/data/KEY`. The pickle runs on a small virtual machine that knows the
//! opcodes `torch.save` writes (protocol 2) and the three callables a state_dict needs:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and `_rebuild_parameter`.
//! Anything else (arbitrary Python objects) is refused with the name of what was found: nothing
//! from the file is ever executed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Kind, Tensor};

/// The tensors of the state_dict in the `torch.save` file at `path`, by name, on the CPU. A
/// checkpoint that wraps its state_dict (`{"state_dict": ...}` or `{"model": ...}`) is unwrapped.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_state_dict(&bytes).with_context(|| format!("{}: not a readable torch.save file", path.display()))
}

fn parse_state_dict(bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    let zip = Zip::parse(bytes)?;
    let pkl = zip
        .names()
        .find(|n| n.ends_with("/data.pkl"))
        .ok_or_else(|| anyhow!("no data.pkl in the archive (a legacy, pre-1.6 torch.save file?)"))?
        .to_string();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let value = Unpickler::new(zip.file(&pkl)?).run()?;
    let dict = match value {
        Value::Dict(d) => d,
        other => bail!("the pickle holds {}, not a state_dict", other.kind()),
    };
    let dict = unwrap_checkpoint(dict);
    let mut out = HashMap::new();
    for (k, v) in dict {
        let Value::Str(name) = k else { bail!("a state_dict key is {}, not a name", k.kind()) };
        let Value::Tensor(t) = v else { bail!("`{name}` is {}, not a tensor", v.kind()) };
        let data = zip.file(&format!("{prefix}data/{}", t.key)).with_context(|| format!("`{name}`"))?;
        out.insert(name.clone(), t.build(data).with_context(|| format!("`{name}`"))?);
    }
    Ok(out)
}

/// `{"state_dict": {...}, "epoch": ...}` or `{"model": {...}}` -> the inner dict.
fn unwrap_checkpoint(dict: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    let has_tensors = dict.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if has_tensors {
        return dict;
    }
    for key in ["state_dict", "model", "model_state_dict"] {
        if let Some((_, Value::Dict(inner))) = dict.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)) {
            return inner.clone();
        }
    }
    dict
}

/// The entries of a zip archive whose files are stored (not compressed), as `torch.save` writes.
struct Zip<'a> {
    bytes: &'a [u8],
    /// name -> (data offset, size)
    entries: Vec<(String, usize, usize)>,
}

impl<'a> Zip<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Zip<'a>> {
        let u16_at = |i: usize| -> Result<usize> {
            Ok(u16::from_le_bytes(bytes.get(i..i + 2).ok_or_else(|| anyhow!("truncated zip"))?.try_into()?) as usize)
        };
        let u32_at = |i: usize| -> Result<usize> {
            Ok(u32::from_le_bytes(bytes.get(i..i + 4).ok_or_else(|| anyhow!("truncated zip"))?.try_into()?) as usize)
        };
        ensure!(bytes.starts_with(b"PK\x03\x04"), "not a zip archive");
        // The end-of-central-directory record: the last `PK 05 06` within 64 kB + 22 of the end.
        let lo = bytes.len().saturating_sub(22 + 65_535);
        let eocd = (lo..bytes.len().saturating_sub(21))
            .rev()
            .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))
            .ok_or_else(|| anyhow!("no zip end-of-central-directory record (truncated file?)"))?;
        let count = u16_at(eocd + 10)?;
        let mut at = u32_at(eocd + 16)?;
        ensure!(count != 0xFFFF && at != 0xFFFF_FFFF, "zip64 archives (over 4 GB) are not supported");
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            ensure!(bytes.get(at..at + 4) == Some(b"PK\x01\x02"), "corrupt zip central directory at byte {at}");
            let method = u16_at(at + 10)?;
            let size = u32_at(at + 20)?;
            let (name_len, extra_len, comment_len) = (u16_at(at + 28)?, u16_at(at + 30)?, u16_at(at + 32)?);
            let local = u32_at(at + 42)?;
            let name = String::from_utf8_lossy(bytes.get(at + 46..at + 46 + name_len).ok_or_else(|| anyhow!("truncated zip"))?)
                .into_owned();
            ensure!(method == 0, "zip entry {name} is compressed (method {method}); torch.save stores them");
            ensure!(bytes.get(local..local + 4) == Some(b"PK\x03\x04"), "corrupt zip local header of {name}");
            let data = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
            ensure!(data + size <= bytes.len(), "zip entry {name} runs past the end of the file");
            entries.push((name, data, size));
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(Zip { bytes, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }

    fn file(&self, name: &str) -> Result<&'a [u8]> {
        let (_, at, size) = self.entries.iter().find(|e| e.0 == name).ok_or_else(|| anyhow!("no {name} in the archive"))?;
        Ok(&self.bytes[*at..at + size])
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    key: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    fn build(&self, data: &[u8]) -> Result<Tensor> {
        let elem = self.kind.elt_size_in_bytes();
        ensure!(data.len() % elem == 0, "storage of {} bytes for {:?} elements", data.len(), self.kind);
        let numel = (data.len() / elem) as i64;
        // The furthest element the view reaches must be inside the storage.
        let last: i64 = self.offset + self.size.iter().zip(&self.stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>();
        ensure!(
            self.size.iter().all(|&s| s >= 0) && self.stride.iter().all(|&s| s >= 0) && (self.size.contains(&0) || last < numel),
            "the view (offset {}, size {:?}, stride {:?}) does not fit its storage of {numel} elements",
            self.offset,
            self.size,
            self.stride
        );
        let storage = Tensor::f_from_data_size(data, &[numel], self.kind)?;
        Ok(storage.f_as_strided(&self.size, &self.stride, self.offset)?.contiguous())
    }
}

/// The values a state_dict pickle builds.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool or a float: their values are never needed (requires_grad, hooks' flags).
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A `module.name` the pickle refers to (never imported: only the names below are known).
    Global(String),
    /// A persistent id resolved to a storage: (key, element kind).
    Storage(String, Kind),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn kind(&self) -> String {
        let what = match self {
            Value::Global(g) => return format!("a reference to {g}"),
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Storage(..) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Mark => "a pickle mark",
        };
        what.to_string()
    }
    fn int(&self) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            v => bail!("expected an int, found {}", v.kind()),
        }
    }
    fn ints(&self) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::int).collect(),
            v => bail!("expected a tuple of ints, found {}", v.kind()),
        }
    }
}

/// The element kind of a `torch.*Storage` class, or of a `torch.<dtype>` (newer files).
fn storage_kind(name: &str) -> Result<Kind> {
    Ok(match name.trim_start_matches("torch.") {
        "FloatStorage" | "float32" | "float" => Kind::Float,
        "DoubleStorage" | "float64" | "double" => Kind::Double,
        "HalfStorage" | "float16" | "half" => Kind::Half,
        "BFloat16Storage" | "bfloat16" => Kind::BFloat16,
        "LongStorage" | "int64" | "long" => Kind::Int64,
        "IntStorage" | "int32" | "int" => Kind::Int,
        "ShortStorage" | "int16" => Kind::Int16,
        "CharStorage" | "int8" => Kind::Int8,
        "ByteStorage" | "uint8" => Kind::Uint8,
        "BoolStorage" | "bool" => Kind::Bool,
        other => bail!("unsupported storage type {other}"),
    })
}

struct Unpickler<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler { data, at: 0, stack: vec![], memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.data.get(self.at..self.at + n).ok_or_else(|| anyhow!("the pickle ends early at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.at..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("unterminated pickle line"))?;
        self.at += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("pickle stack underflow at byte {}", self.at))
    }
    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| anyhow!("pickle: no mark"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| anyhow!("pickle stack underflow at byte {}", self.at))
    }
    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} unset"))
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into()?);
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    ensure!(n <= 8, "pickle: a {n}-byte integer");
                    let b = self.take(n)?;
                    let mut v: i64 = if b.last().is_some_and(|&x| x & 0x80 != 0) { -1 } else { 0 };
                    for &x in b.iter().rev() {
                        v = (v << 8) | i64::from(x);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float)
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    ensure!(self.stack.len() >= n, "pickle stack underflow");
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        t => bail!("pickle APPEND to {}", t.kind()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        t => bail!("pickle APPENDS to {}", t.kind()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        t => bail!("pickle SETITEM on {}", t.kind()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    ensure!(items.len() % 2 == 0, "pickle SETITEMS with an odd number of values");
                    let mut it = items.into_iter();
                    let mut pairs = vec![];
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        t => bail!("pickle SETITEMS on {}", t.kind()),
                    }
                }
                b'q' => {
                    let i = self.u8()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i.into(), v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (module, name) else { bail!("pickle STACK_GLOBAL of non-strings") };
                    self.stack.push(Value::Global(format!("{m}.{n}")))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(pid)?)
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.stack.push(reduce(f, args)?)
                }
                b'b' => {
                    // BUILD: an OrderedDict's `_metadata` state; nothing a state_dict needs.
                    self.pop()?;
                }
                op => bail!("unsupported pickle opcode {op:#04x} at byte {}", self.at - 1),
            }
        }
    }
}

/// `('storage', torch.FloatStorage, '0', 'cpu', 9408)` -> the storage it names.
fn persistent_load(pid: Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { bail!("a persistent id that is {}", pid.kind()) };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(class), Value::Str(key), ..] if tag == "storage" => {
            Ok(Value::Storage(key.clone(), storage_kind(class)?))
        }
        _ => bail!("a persistent id that is not a tensor storage"),
    }
}

/// The callables a state_dict pickle calls; anything else is refused by name.
fn reduce(f: Value, args: Value) -> Result<Value> {
    let Value::Global(name) = &f else { bail!("pickle REDUCE of {}", f.kind()) };
    let Value::Tuple(args) = args else { bail!("pickle REDUCE of {name} without an argument tuple") };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(vec![])),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [Value::Storage(key, kind), offset, size, stride, ..] = args.as_slice() else {
                bail!("{name} with unexpected arguments");
            };
            Ok(Value::Tensor(TensorRef {
                key: key.clone(),
                kind: *kind,
                offset: offset.int()?,
                size: size.ints()?,
                stride: stride.ints()?,
            }))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => bail!("{name} without a tensor"),
        },
        other => bail!("the file calls {other}, which a state_dict does not: refused (only tensors are read)"),
    }
}
