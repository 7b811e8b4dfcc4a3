//! woof on an ESP32-C3: joins Wi-Fi, reads the chip's temperature sensor once
//! a second and appends each reading to a woof topic through a gateway node,
//! over UDP, with the bridge protocol's `no_std` core
//! (`woof_mcu_bridge::session::Session`, eight requests of at most 128
//! bytes). The core needs no allocator; the Wi-Fi driver (esp-radio) does,
//! so this firmware has a heap for it. See README.md for the settings (env
//! vars read at compile time), flashing, and what to expect.
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::net::SocketAddrV4;

use embassy_executor::Spawner;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Runner, StackResources};
use embassy_time::{Duration, Instant, Timer, with_timeout};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::tsens::{self, TemperatureSensor};
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, WifiController,
};
use static_cell::StaticCell;
use woof_mcu_bridge::session::{Config, Event, PING_INTERVAL_MS, RequestKind, Session};
use woof_mcu_bridge::wire::{FRAME_LEN_MAX, Topic, code};

esp_bootloader_esp_idf::esp_app_desc!();

/// Settings, read when the firmware is compiled (README.md, "Settings").
/// The defaults only make it build: a placeholder network and an all-zero
/// key that no registration has.
const SSID: &str = setting(option_env!("WOOF_WIFI_SSID"), "woof-placeholder");
const PASSWORD: &str = setting(option_env!("WOOF_WIFI_PASSWORD"), "");
const GATEWAY: &str = setting(option_env!("WOOF_GATEWAY"), "udp://192.168.1.10:7900");
const DEVICE_ID: &str = setting(option_env!("WOOF_DEVICE_ID"), "esp32c3-1");
const KEY: [u8; 16] = parse_key(setting(
    option_env!("WOOF_DEVICE_KEY"),
    "00000000000000000000000000000000",
));
const TOPIC: &str = setting(option_env!("WOOF_TOPIC"), "sensors/esp32c3-1");

// Checked at compile time, so a bad setting is a build error, not a device
// that boots and is refused.
const _: () = check_device_id(DEVICE_ID);
const _: () = check_topic(TOPIC);
const GATEWAY_ADDR: ([u8; 4], u16) = parse_gateway(GATEWAY);

/// Requests in flight, and the largest frame one may be: the simulator's
/// (and a small microcontroller's) session.
const OUTBOX: usize = 8;
const FRAME: usize = 128;
/// A reading every this many ms.
const READING_EVERY_MS: u64 = 1_000;
/// Readings waiting and not a word from the gateway for this long: say
/// hello again at once (it may have restarted and forgotten the session).
const SILENCE_MS: u64 = 15_000;
/// The longest wait for room to send a frame.
const SEND_WAIT_MS: u64 = 200;
/// Counts are logged this often.
const STATS_EVERY_MS: u64 = 60_000;

const fn setting(value: Option<&'static str>, default: &'static str) -> &'static str {
    match value {
        Some(v) => v,
        None => default,
    }
}

/// The 32 hex digits `woof device add` printed.
const fn parse_key(hex: &str) -> [u8; 16] {
    let b = hex.as_bytes();
    assert!(
        b.len() == 32,
        "WOOF_DEVICE_KEY must be the 32 hex digits `woof device add` printed"
    );
    let mut key = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        key[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    key
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("WOOF_DEVICE_KEY must be hex digits"),
    }
}

/// As the registry checks it: 1 to 32 characters of `[A-Za-z0-9._-]`.
const fn check_device_id(id: &str) {
    let b = id.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 32,
        "WOOF_DEVICE_ID is 1 to 32 characters"
    );
    let mut i = 0;
    while i < b.len() {
        assert!(
            b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_' || b[i] == b'-',
            "WOOF_DEVICE_ID is characters of [A-Za-z0-9._-]"
        );
        i += 1;
    }
}

/// As a frame may name it: 1 to 64 bytes of `[a-z0-9._/-]`.
const fn check_topic(topic: &str) {
    let b = topic.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 64,
        "WOOF_TOPIC is 1 to 64 characters"
    );
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        assert!(
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == b'.'
                || c == b'_'
                || c == b'/'
                || c == b'-',
            "WOOF_TOPIC is characters of [a-z0-9._/-]"
        );
        i += 1;
    }
}

/// `udp://A.B.C.D:PORT` or `A.B.C.D:PORT` (an IPv4 address: no DNS here).
const fn parse_gateway(text: &str) -> ([u8; 4], u16) {
    let b = text.as_bytes();
    let mut i = 0;
    if b.len() > 6
        && b[0] == b'u'
        && b[1] == b'd'
        && b[2] == b'p'
        && b[3] == b':'
        && b[4] == b'/'
        && b[5] == b'/'
    {
        i = 6;
    }
    let mut ip = [0u8; 4];
    let mut part = 0;
    let mut port: u32 = 0;
    let mut value: u32 = 0;
    let mut digits = 0;
    while i <= b.len() {
        let c = if i < b.len() { b[i] } else { 0 };
        if c.is_ascii_digit() {
            value = value * 10 + (c - b'0') as u32;
            digits += 1;
            assert!(digits <= 5, "WOOF_GATEWAY must be udp://A.B.C.D:PORT");
        } else {
            let ends_part = (part < 3 && c == b'.') || (part == 3 && c == b':');
            let ends_port = part == 4 && c == 0;
            assert!(
                digits > 0 && (ends_part || ends_port),
                "WOOF_GATEWAY must be udp://A.B.C.D:PORT"
            );
            if part < 4 {
                assert!(value <= 255, "WOOF_GATEWAY: an address byte is 0 to 255");
                ip[part] = value as u8;
            } else {
                port = value;
            }
            part += 1;
            value = 0;
            digits = 0;
        }
        i += 1;
    }
    assert!(
        port > 0 && port <= 65535,
        "WOOF_GATEWAY: the port is 1 to 65535"
    );
    (ip, port as u16)
}

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

/// `'static` storage for what the tasks share.
macro_rules! make_static {
    ($t:ty, $val:expr) => {{
        static CELL: StaticCell<$t> = StaticCell::new();
        CELL.init($val)
    }};
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger(log::LevelFilter::Info);
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The Wi-Fi driver's heap (the bridge core itself allocates nothing):
    // the RAM the bootloader used, and some more.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 36 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    println!("woof: device {DEVICE_ID}, gateway {GATEWAY}, topic {TOPIC}, Wi-Fi {SSID:?}");
    let (ip, port) = GATEWAY_ADDR;
    let gateway = IpEndpoint::from(SocketAddrV4::new(ip.into(), port));

    let auth = if PASSWORD.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::WpaWpa2Personal(
            PASSWORD
                .try_into()
                .expect("WOOF_WIFI_PASSWORD is at most 64 bytes"),
        )
    };
    let station = WifiConfig::Station(
        StationConfig::default()
            .with_ssid(SSID.try_into().expect("WOOF_WIFI_SSID is at most 32 bytes"))
            .with_authentication(auth),
    );
    let interface = Interface::station();
    let controller = WifiController::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(station),
    )
    .expect("Wi-Fi did not start");

    // With the radio on, the RNG is a true random source (RF noise).
    let rng = Rng::new();
    let random64 = || (u64::from(rng.random()) << 32) | u64::from(rng.random());

    let (stack, runner) = embassy_net::new(
        interface,
        embassy_net::Config::dhcpv4(Default::default()),
        make_static!(StackResources<3>, StackResources::<3>::new()),
        random64(),
    );
    spawner.spawn(wifi_task(controller).expect("wifi task"));
    spawner.spawn(net_task(runner).expect("net task"));

    let sensor = TemperatureSensor::new(peripherals.TSENS, tsens::Config::default())
        .expect("temperature sensor");

    println!("woof: waiting for an address (DHCP)");
    stack.wait_config_up().await;
    if let Some(c) = stack.config_v4() {
        println!("woof: address {}", c.address);
    }

    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx_buf = [0u8; 2 * FRAME_LEN_MAX];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_buf = [0u8; 2 * FRAME_LEN_MAX];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    socket.bind(0).expect("UDP socket");

    // A new boot id at every boot: the gateway keys its dedupe on it.
    let boot_id = random64();
    let mut session = match Session::<OUTBOX, FRAME>::new(
        &Config {
            device_id: DEVICE_ID.as_bytes(),
            key: KEY,
            boot_id,
            caps: 0,
            ping_interval_ms: PING_INTERVAL_MS,
        },
        now_ms(),
        rng.random(),
    ) {
        Ok(s) => s,
        Err(e) => panic!("device session: {e}"),
    };
    println!("woof: boot {boot_id:016x}, saying hello");

    let mut out = [0u8; FRAME_LEN_MAX];
    let mut buf = [0u8; FRAME_LEN_MAX + 1];
    // Device seq -> reading number, for the readings in the outbox.
    let mut pending: [(u32, u32); OUTBOX] = [(0, 0); OUTBOX];
    let mut readings: u32 = 0;
    let mut acked: u32 = 0;
    let mut skipped: u32 = 0;
    let mut next_reading = now_ms();
    let mut next_stats = now_ms() + STATS_EVERY_MS;
    let mut last_heard = now_ms();
    let mut link_up = true;

    loop {
        let now = now_ms();

        // The Wi-Fi link: while it is down nothing can be sent; once it is
        // back (perhaps with a new address), say hello again at once.
        if stack.is_config_up() != link_up {
            link_up = !link_up;
            if link_up {
                println!("woof: network back; saying hello again");
                session.reconnect(now);
                last_heard = now;
            } else {
                println!("woof: network down");
            }
        }

        // A reading a second, queued in the outbox while there is room.
        if now >= next_reading {
            next_reading += READING_EVERY_MS;
            if next_reading <= now {
                next_reading = now + READING_EVERY_MS;
            }
            readings += 1;
            let centi = (sensor.get_temperature().to_celsius() * 100.0) as i32;
            let mut payload = Buf::<64>::new();
            let _ = write!(
                payload,
                "{{\"n\":{readings},\"temp_c\":{}{}.{:02}}}",
                if centi < 0 { "-" } else { "" },
                centi.unsigned_abs() / 100,
                centi.unsigned_abs() % 100
            );
            match session.append(
                Topic::Name(TOPIC.as_bytes()),
                payload.as_bytes(),
                rng.random(),
            ) {
                Ok(seq) => {
                    if let Some(p) = pending.iter_mut().find(|p| p.0 == 0) {
                        *p = (seq, readings);
                    }
                }
                Err(e) => {
                    skipped += 1;
                    println!("woof: reading {readings} skipped: {e}");
                }
            }
        }

        // Readings wait, the session thinks it is up, and the gateway has
        // said nothing for a while: start over with a hello.
        if session.is_connected()
            && session.outbox_len() > 0
            && now.saturating_sub(last_heard) > SILENCE_MS
        {
            println!(
                "woof: nothing from the gateway for {} s; saying hello again",
                SILENCE_MS / 1000
            );
            session.reconnect(now);
            last_heard = now;
        }

        loop {
            match session.poll_transmit(now, &mut out) {
                // A frame that cannot go now (no route, or the socket's
                // buffer full while the gateway's address resolves) is
                // dropped: the session sends requests again when they time
                // out.
                Ok(Some(len)) if link_up => {
                    let send = socket.send_to(&out[..len], gateway);
                    match with_timeout(Duration::from_millis(SEND_WAIT_MS), send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::debug!("woof: send: {e:?}"),
                        Err(_) => log::debug!("woof: send: no room"),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    println!("woof: session: {e}");
                    break;
                }
            }
        }
        while let Some(event) = session.poll_event(now) {
            report(event, &mut pending, &mut acked);
        }

        if now >= next_stats {
            next_stats = now + STATS_EVERY_MS;
            let s = session.stats();
            let d = session.drops();
            println!(
                "woof: readings {readings}, acked {acked}, skipped {skipped}, waiting {}; frames sent {}, retransmitted {}; dropped: {} forged, {} replayed, {} malformed",
                session.outbox_len(),
                s.sent,
                s.retransmitted,
                d.forged,
                d.replayed,
                d.malformed
            );
        }

        // Sleep until the session, the next reading or the stats are due,
        // or a frame comes.
        let wake = session
            .poll_timeout()
            .unwrap_or(u64::MAX)
            .min(next_reading)
            .min(next_stats);
        let wait = wake.saturating_sub(now_ms()).clamp(1, 1_000);
        if let Ok(Ok((n, meta))) =
            with_timeout(Duration::from_millis(wait), socket.recv_from(&mut buf)).await
        {
            if meta.endpoint != gateway || n > FRAME_LEN_MAX {
                continue;
            }
            let now = now_ms();
            match session.handle_input(now, &mut buf[..n]) {
                Ok(event) => {
                    last_heard = now;
                    if let Some(event) = event {
                        report(event, &mut pending, &mut acked);
                    }
                }
                Err(e) => log::debug!("woof: frame dropped: {e}"),
            }
        }
    }
}

/// Logs what the session says, and forgets settled readings.
fn report(event: Event<'_>, pending: &mut [(u32, u32); OUTBOX], acked: &mut u32) {
    let mut settle = |seq: u32| -> u32 {
        match pending.iter_mut().find(|p| p.0 == seq) {
            Some(p) => {
                let n = p.1;
                *p = (0, 0);
                n
            }
            None => 0,
        }
    };
    match event {
        Event::Connected { session_id } => {
            println!("woof: connected, session {session_id:08x}")
        }
        Event::Disconnected => println!("woof: the gateway stopped answering; saying hello again"),
        Event::Acked {
            seq,
            kind: RequestKind::Append,
            topic_seq,
        } => {
            *acked += 1;
            println!("woof: reading {} acked: {TOPIC} #{topic_seq}", settle(seq));
        }
        Event::Acked {
            kind, topic_seq, ..
        } => println!("woof: {kind:?} acked at #{topic_seq}"),
        Event::Rejected { seq, kind, code } => {
            let why = match code {
                code::UNKNOWN_SESSION => "no session",
                code::FORBIDDEN => "the registration does not allow this topic",
                code::NOT_FOUND => "no such topic",
                code::BUSY => "busy",
                _ => "refused",
            };
            let n = if kind == RequestKind::Append {
                settle(seq)
            } else {
                0
            };
            println!("woof: {kind:?} {n} refused (code {code}: {why})");
        }
        Event::GaveUp { seq, kind } => {
            let n = if kind == RequestKind::Append {
                settle(seq)
            } else {
                0
            };
            println!(
                "woof: {kind:?} {n} given up: no answer (it may have been written, never twice)"
            );
        }
        Event::Delivery {
            topic_seq, payload, ..
        } => println!(
            "woof: delivery #{topic_seq}: {}",
            core::str::from_utf8(payload).unwrap_or("(not UTF-8)")
        ),
        Event::OffloadResult { seq, status, .. } => {
            println!("woof: offload {seq}: status {status}")
        }
        Event::Pong { rtt_ms } => println!("woof: pong, {rtt_ms} ms"),
    }
}

/// Joins the network and joins it again whenever it is lost.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("woof: Wi-Fi connected to {SSID:?}");
                let info = controller.wait_for_disconnect_async().await.ok();
                println!("woof: Wi-Fi disconnected: {info:?}");
            }
            Err(e) => println!("woof: Wi-Fi connect to {SSID:?} failed: {e:?}"),
        }
        Timer::after(Duration::from_millis(5_000)).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

/// A fixed buffer that `write!` fills (what does not fit is cut).
struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf {
            bytes: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        if self.len + b.len() > N {
            return Err(core::fmt::Error);
        }
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}
