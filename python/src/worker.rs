//! The worker process: one Python handler, loaded once and kept warm.
//!
//! The node starts its own binary again with a hidden subcommand that
//! calls [`serve`]. The worker reads [`ToWorker`] frames on its standard
//! input and writes [`FromWorker`] frames on what was its standard output;
//! file descriptor 1 is pointed at standard error first, so nothing a
//! handler prints can break the frames (`print` goes to the invocation's
//! logs anyway).
//!
//! What the process itself holds (ADR 12): after the handler is loaded,
//! its data segment may grow by the handler's memory cap and no more
//! (`RLIMIT_DATA`; past it an allocation fails and the worker dies, which
//! the node sees and records), it may open no file (`RLIMIT_NOFILE` 0) and
//! write none (`RLIMIT_FSIZE` 0), it runs at a lower priority than the
//! node, and it dies with the node. The time budget is the node's: it
//! kills a worker that overruns.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufReader, Stdin};
use std::os::fd::FromRawFd;

use rustpython_vm::builtins::{PyBytes, PyStr};
use rustpython_vm::function::FuncArgs;
use rustpython_vm::{AsObject, Interpreter, PyObjectRef, PyResult, Settings, VirtualMachine};

use crate::modules;
use crate::wire::{
    self, Answer, Ask, FromWorker, LOG_LINE_BYTES_MAX, LOG_LINES_MAX, Load, OUTPUT_BYTES_MAX,
    OUTPUTS_MAX, Outcome, Output, Refusal, SCAN_MAX, ToWorker,
};

/// The stack the interpreter runs on: deep enough that Python's own
/// recursion limit (1,000 frames) is reached before the stack's end.
const STACK_BYTES: usize = 256 << 20;
/// The most characters of a traceback kept.
const ERROR_CHARS_MAX: usize = 4096;

/// The pipes to the node, and what the invocation under way has done.
struct Channel {
    input: BufReader<Stdin>,
    output: File,
    outcome: Outcome,
    output_bytes: usize,
}

thread_local! {
    static CHANNEL: RefCell<Option<Channel>> = const { RefCell::new(None) };
}

/// Runs the worker until the node closes its input; returns the exit code.
pub fn serve() -> i32 {
    // SAFETY: plain system calls on this process's own descriptors, before
    // any other thread exists.
    let output = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            eprintln!("woof python worker: cannot set up its output");
            return 70;
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        set_limit(libc::RLIMIT_CORE, 0);
        set_limit(libc::RLIMIT_FSIZE, 0);
        File::from_raw_fd(fd)
    };
    let channel = Channel {
        input: BufReader::new(std::io::stdin()),
        output,
        outcome: Outcome::default(),
        output_bytes: 0,
    };
    // One line a node can quote, not a backtrace hint.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("woof python worker panicked: {info}");
    }));
    let run = std::thread::Builder::new()
        .name("python".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            CHANNEL.with(|c| *c.borrow_mut() = Some(channel));
            run()
        });
    match run.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        _ => 70,
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct it is given.
    unsafe { libc::setrlimit(resource, &limit) };
}

fn send(message: &FromWorker) {
    let sent = CHANNEL.with(|c| {
        let mut c = c.borrow_mut();
        let c = c
            .as_mut()
            .expect("the channel is set before the interpreter runs");
        wire::write(&mut c.output, message)
    });
    if sent.is_err() {
        // The node is gone: nothing is left to do.
        std::process::exit(0);
    }
}

fn receive() -> Option<ToWorker> {
    CHANNEL.with(|c| {
        let mut c = c.borrow_mut();
        let c = c
            .as_mut()
            .expect("the channel is set before the interpreter runs");
        wire::read(&mut c.input).ok().flatten()
    })
}

fn run() -> i32 {
    let Some(ToWorker::Load(load)) = receive() else {
        eprintln!("woof python worker: the first message must load a handler");
        return 64;
    };
    let mut settings = Settings::default();
    settings.import_site = false;
    settings.isolated = true;
    settings.user_site_directory = false;
    settings.install_signal_handlers = false;
    let interpreter = Interpreter::without_stdlib(settings);
    interpreter.enter(|vm| {
        let loaded = match load_handler(vm, &load) {
            Ok(loaded) => loaded,
            Err(refusal) => {
                send(&FromWorker::Refused(refusal));
                return 0;
            }
        };
        confine(load.memory_bytes);
        send(&FromWorker::Loaded);
        loop {
            match receive() {
                Some(ToWorker::Invoke { seq, payload }) => {
                    let outcome = invoke(vm, &loaded, seq, payload);
                    send(&FromWorker::Done(outcome));
                }
                None => return 0,
                Some(other) => {
                    eprintln!("woof python worker: unexpected {other:?}");
                    return 64;
                }
            }
        }
    })
}

/// After loading: the memory cap on top of what is used now, and no files.
fn confine(memory_bytes: u64) {
    let data = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmData:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    match data {
        Some(data) => set_limit(libc::RLIMIT_DATA, data.saturating_add(memory_bytes)),
        None => eprintln!("woof python worker: cannot read its memory use; no memory cap"),
    }
    set_limit(libc::RLIMIT_NOFILE, 0);
}

const PRELUDE: &str = r#"
class Context:
    """What a handler sees of woof: `handle(ctx, seq, payload)`."""
    __slots__ = ("topic", "node", "config")
    def __init__(self, topic, node, config):
        self.topic = topic
        self.node = node
        self.config = config
    def append(self, topic, data):
        """Appends `data` (bytes or str) to `topic`, once, after this invocation."""
        _woof.append(topic, data)
    def get(self, topic, seq):
        """The payload of element `seq` of `topic`, or None."""
        return _woof.get(topic, seq)
    def latest(self, topic):
        """(seq, payload) of the newest element of `topic`, or None."""
        return _woof.latest(topic)
    def scan(self, topic, start, limit=100):
        """[(seq, payload), ...] from `start`, at most `limit` (1000)."""
        return _woof.scan(topic, start, limit)
    def log(self, *parts):
        """Adds a line to this invocation's logs."""
        _woof.log(" ".join(str(p) for p in parts))
    def __repr__(self):
        return f"<woof ctx topic={self.topic!r} node={self.node!r}>"

class _Printed:
    """`print` and `sys.stdout`: whole lines go to the invocation's logs."""
    def __init__(self):
        self.pending = ""
    def write(self, text):
        *lines, self.pending = (self.pending + str(text)).split("\n")
        for line in lines:
            _woof.log(line)
        if len(self.pending) > 1024:
            self.flush()
        return len(text)
    def flush(self):
        if self.pending:
            _woof.log(self.pending)
            self.pending = ""
"#;

/// Compiles and runs the handler's module, and finds `handle`.
fn load_handler(vm: &VirtualMachine, load: &Load) -> Result<Loaded, Refusal> {
    let failed = |vm: &VirtualMachine, e| Refusal {
        line: None,
        message: traceback(vm, e),
    };
    // The prelude and the modules are made with the interpreter's own
    // import; the handler's code runs only after it is replaced.
    let (ctx, printed) = (|| -> PyResult<(PyObjectRef, PyObjectRef)> {
        let scope = vm.new_scope_with_builtins();
        scope.globals.set_item("_woof", woof_module(vm)?, vm)?;
        let code = vm
            .compile(
                PRELUDE,
                rustpython_vm::compiler::Mode::Exec,
                "<woof>".into(),
            )
            .map_err(|e| vm.new_syntax_error(&e, Some(PRELUDE)))?;
        vm.run_code_obj(code, scope.clone())?;
        let printed = scope.globals.get_item("_Printed", vm)?.call((), vm)?;
        vm.sys_module
            .as_object()
            .set_attr("stdout", printed.clone(), vm)?;
        vm.sys_module
            .as_object()
            .set_attr("stderr", printed.clone(), vm)?;
        modules::install(vm)?;
        let config = modules::json_value(vm, &load.config)?;
        let ctx = scope.globals.get_item("Context", vm)?.call(
            (
                vm.ctx.new_str(load.topic.as_str()),
                vm.ctx.new_str(load.node.as_str()),
                config,
            ),
            vm,
        )?;
        Ok((ctx, printed))
    })()
    .map_err(|e| failed(vm, e))?;

    let code = vm
        .compile(
            &load.source,
            rustpython_vm::compiler::Mode::Exec,
            "<handler>".into(),
        )
        .map_err(|e| {
            let (line, _column) = e.python_location();
            Refusal {
                line: (line > 0).then_some(line as u32),
                message: e.to_string(),
            }
        })?;
    let scope = vm.new_scope_with_builtins();
    let _ = scope
        .globals
        .set_item("__name__", vm.ctx.new_str("handler").into(), vm);
    vm.run_code_obj(code, scope.clone())
        .map_err(|e| failed(vm, e))?;
    let handle = scope
        .globals
        .get_item_opt("handle", vm)
        .ok()
        .flatten()
        .filter(|h| h.is_callable())
        .ok_or_else(|| Refusal {
            line: None,
            message: "the source defines no function `handle(ctx, seq, payload)`".into(),
        })?;
    Ok(Loaded {
        handle,
        ctx,
        printed,
    })
}

/// A loaded handler: its function, the `ctx` it is given, and where its
/// `print` goes (flushed after each invocation).
struct Loaded {
    handle: PyObjectRef,
    ctx: PyObjectRef,
    printed: PyObjectRef,
}

fn invoke(vm: &VirtualMachine, loaded: &Loaded, seq: u64, payload: Vec<u8>) -> Outcome {
    with_outcome(|o, bytes| {
        *o = Outcome::default();
        *bytes = 0;
    });
    let args = (
        loaded.ctx.clone(),
        vm.ctx.new_int(seq),
        vm.ctx.new_bytes(payload),
    );
    let called = loaded.handle.call(args, vm);
    let _ = vm.call_method(&loaded.printed, "flush", ());
    let error = match called {
        Ok(returned) if vm.is_none(&returned) => None,
        Ok(returned) => Some(format!(
            "handle returned a {}; it must return None (it appends its outputs with ctx.append)",
            returned.class().name()
        )),
        Err(e) => Some(traceback(vm, e)),
    };
    let mut outcome = with_outcome(|o, _| std::mem::take(o));
    if error.is_some() {
        // A failed invocation appends nothing: it runs again, whole.
        outcome.outputs.clear();
    }
    outcome.error = error;
    outcome
}

fn with_outcome<R>(f: impl FnOnce(&mut Outcome, &mut usize) -> R) -> R {
    CHANNEL.with(|c| {
        let mut c = c.borrow_mut();
        let c = c
            .as_mut()
            .expect("the channel is set before the interpreter runs");
        f(&mut c.outcome, &mut c.output_bytes)
    })
}

fn traceback(vm: &VirtualMachine, e: rustpython_vm::builtins::PyBaseExceptionRef) -> String {
    let mut text = String::new();
    if vm.write_exception(&mut text, &e).is_err() || text.is_empty() {
        text = format!("{}", e.class().name());
    }
    let text = qualified(vm, &e, text.trim_end());
    let text = text.as_str();
    if text.chars().count() > ERROR_CHARS_MAX {
        // The end says what was raised: keep it.
        let skip = text.chars().count() - ERROR_CHARS_MAX;
        format!("...{}", text.chars().skip(skip).collect::<String>())
    } else {
        text.to_string()
    }
}

/// `text` with the exception's last line naming its class with its module
/// (`struct.error: ...`, as CPython does) unless that is `builtins`.
fn qualified(
    vm: &VirtualMachine,
    e: &rustpython_vm::builtins::PyBaseExceptionRef,
    text: &str,
) -> String {
    let class = e.class();
    let name = class.name().to_string();
    let module = class
        .as_object()
        .get_attr("__module__", vm)
        .ok()
        .and_then(|m| {
            m.downcast_ref::<PyStr>()
                .map(|m| m.to_string_lossy().into_owned())
        });
    let Some(module) = module.filter(|m| m != "builtins" && m != "__main__") else {
        return text.to_string();
    };
    let line = |at: usize| {
        let rest = &text[at..];
        rest.strip_prefix(name.as_str()).is_some_and(|after| {
            after.is_empty() || after.starts_with(':') || after.starts_with('\n')
        })
    };
    let at = text
        .rmatch_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| line(i))
        .or_else(|| line(0).then_some(0));
    match at {
        Some(at) => format!("{}{module}.{}", &text[..at], &text[at..]),
        None => text.to_string(),
    }
}

/// `_woof`: what `ctx` calls.
fn woof_module(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let dict = vm.ctx.new_dict();
    dict.set_item("append", vm.new_function("append", ctx_append).into(), vm)?;
    dict.set_item("log", vm.new_function("log", ctx_log).into(), vm)?;
    dict.set_item("get", vm.new_function("get", ctx_get).into(), vm)?;
    dict.set_item("latest", vm.new_function("latest", ctx_latest).into(), vm)?;
    dict.set_item("scan", vm.new_function("scan", ctx_scan).into(), vm)?;
    Ok(vm.new_module("_woof", dict, None).into())
}

fn topic_name(topic: PyObjectRef, vm: &VirtualMachine) -> PyResult<String> {
    topic
        .downcast_ref::<PyStr>()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| vm.new_type_error("a topic is named by a str"))
}

fn ctx_append(topic: PyObjectRef, data: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let topic = topic_name(topic, vm)?;
    let payload = if let Some(b) = data.downcast_ref::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Some(s) = data.downcast_ref::<PyStr>() {
        s.to_string_lossy().as_bytes().to_vec()
    } else {
        return Err(vm.new_type_error(format!(
            "ctx.append() takes bytes or str, not {} (json.dumps() makes a str)",
            data.class().name()
        )));
    };
    with_outcome(|o, bytes| {
        if o.outputs.len() >= OUTPUTS_MAX {
            return Err(vm.new_value_error(format!(
                "ctx.append(): at most {OUTPUTS_MAX} appends per element"
            )));
        }
        if *bytes + payload.len() > OUTPUT_BYTES_MAX {
            return Err(vm.new_value_error(format!(
                "ctx.append(): at most {OUTPUT_BYTES_MAX} bytes of appends per element"
            )));
        }
        *bytes += payload.len();
        o.outputs.push(Output { topic, payload });
        Ok(())
    })
}

fn ctx_log(text: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let text = text.str(vm)?.to_string_lossy().into_owned();
    with_outcome(|o, _| {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if o.logs.len() >= LOG_LINES_MAX {
                break;
            }
            let mut line = line.to_string();
            if line.len() > LOG_LINE_BYTES_MAX {
                let mut cut = LOG_LINE_BYTES_MAX;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            o.logs.push(line);
        }
    });
    Ok(())
}

/// Asks the node to read, and waits for its answer.
fn ask(ask: Ask, vm: &VirtualMachine) -> PyResult<Answer> {
    send(&FromWorker::Ask(ask));
    match receive() {
        Some(ToWorker::Answer(Answer::Failed(why))) => Err(vm.new_runtime_error(why)),
        Some(ToWorker::Answer(answer)) => Ok(answer),
        // The node went away or broke the protocol: nothing to go on with.
        _ => std::process::exit(0),
    }
}

fn element_tuple(vm: &VirtualMachine, e: wire::Element) -> PyObjectRef {
    vm.new_tuple((vm.ctx.new_int(e.seq), vm.ctx.new_bytes(e.payload)))
        .into()
}

fn ctx_get(topic: PyObjectRef, seq: u64, vm: &VirtualMachine) -> PyResult {
    let topic = topic_name(topic, vm)?;
    match ask(Ask::Get { topic, seq }, vm)? {
        Answer::Element(Some(e)) => Ok(vm.ctx.new_bytes(e.payload).into()),
        Answer::Element(None) => Ok(vm.ctx.none()),
        other => Err(vm.new_runtime_error(format!("unexpected answer {other:?}"))),
    }
}

fn ctx_latest(topic: PyObjectRef, vm: &VirtualMachine) -> PyResult {
    let topic = topic_name(topic, vm)?;
    match ask(Ask::Latest { topic }, vm)? {
        Answer::Element(Some(e)) => Ok(element_tuple(vm, e)),
        Answer::Element(None) => Ok(vm.ctx.none()),
        other => Err(vm.new_runtime_error(format!("unexpected answer {other:?}"))),
    }
}

fn ctx_scan(args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let (topic, from, limit): (PyObjectRef, u64, u32) = args.bind(vm)?;
    let topic = topic_name(topic, vm)?;
    if limit == 0 || limit > SCAN_MAX {
        return Err(vm.new_value_error(format!("ctx.scan(): limit must be 1 to {SCAN_MAX}")));
    }
    match ask(Ask::Scan { topic, from, limit }, vm)? {
        Answer::Elements(elements) => Ok(vm
            .ctx
            .new_list(elements.into_iter().map(|e| element_tuple(vm, e)).collect())
            .into()),
        other => Err(vm.new_runtime_error(format!("unexpected answer {other:?}"))),
    }
}
