// SSH replay: asciinema-player (bundled from npm) with our own labelled controls for
// play/pause, seek and speed. The player takes its speed at creation, so a speed change
// re-creates it at the current position.
import * as AsciinemaPlayer from "asciinema-player";
import "asciinema-player/dist/bundle/asciinema-player.css";
import { useEffect, useRef, useState } from "preact/hooks";
import { formatClock } from "../format";

const SPEEDS = [0.5, 1, 2, 4, 8];

export function Player({ src, title }: { src: string; title: string }) {
  const host = useRef<HTMLDivElement>(null);
  const player = useRef<AsciinemaPlayer.Player | null>(null);
  const [speed, setSpeed] = useState(1);
  const [playing, setPlaying] = useState(false);
  const [position, setPosition] = useState(0);
  const [duration, setDuration] = useState<number | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const resumeAt = useRef(0);

  useEffect(() => {
    if (!host.current) return;
    setError(null);
    const p = AsciinemaPlayer.create(
      { url: src, fetchOpts: { credentials: "same-origin" } },
      host.current,
      {
        speed,
        startAt: resumeAt.current,
        preload: true,
        fit: "width",
        controls: true,
        idleTimeLimit: 2,
        terminalFontSize: "small",
        logger: {
          log() {},
          debug() {},
          info() {},
          warn() {},
          error: (...args: unknown[]) =>
            setError(`The recording could not be played: ${args.join(" ")}`),
        },
      },
    );
    player.current = p;
    p.addEventListener("play", () => setPlaying(true));
    p.addEventListener("playing", () => setPlaying(true));
    p.addEventListener("pause", () => setPlaying(false));
    p.addEventListener("ended", () => setPlaying(false));
    const t = window.setInterval(() => {
      setPosition(p.getCurrentTime() ?? 0);
      const d = p.getDuration();
      if (d !== undefined) setDuration(d);
    }, 250);
    return () => {
      window.clearInterval(t);
      resumeAt.current = p.getCurrentTime() ?? 0;
      p.dispose();
      player.current = null;
    };
  }, [src, speed]);

  const toggle = () => {
    const p = player.current;
    if (!p) return;
    if (playing) void p.pause();
    else void p.play();
  };
  const seek = (to: number) => {
    setPosition(to);
    void player.current?.seek(to);
  };

  return (
    <section class="player" aria-labelledby="replay-heading">
      <h2 id="replay-heading">Terminal replay</h2>
      <div
        ref={host}
        class="player-host"
        role="region"
        aria-label={title}
        data-testid="asciinema"
      />
      <div class="player-controls" role="group" aria-label="Replay controls">
        <button type="button" onClick={toggle} aria-pressed={playing}>
          {playing ? "Pause" : "Play"}
        </button>
        <label>
          <span>Position</span>
          <input
            type="range"
            min={0}
            max={duration ?? 0}
            step="any"
            value={position}
            disabled={!duration}
            onInput={(e) => seek(Number((e.target as HTMLInputElement).value))}
            aria-valuetext={`${formatClock(position)} of ${formatClock(duration ?? 0)}`}
          />
        </label>
        <output aria-live="off">
          {formatClock(position)} / {duration === undefined ? "…" : formatClock(duration)}
        </output>
        <label>
          <span>Speed</span>
          <select
            value={String(speed)}
            onChange={(e) => setSpeed(Number((e.target as HTMLSelectElement).value))}
          >
            {SPEEDS.map((s) => (
              <option value={String(s)}>{s}×</option>
            ))}
          </select>
        </label>
        <a href={src} download>
          Download recording (.cast)
        </a>
      </div>
      {error && (
        <p class="error-note" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}
