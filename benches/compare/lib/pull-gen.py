#!/usr/bin/env python3
"""Deterministic data for benches/compare/pull.sh (the downlink comparison).

    pull-gen.py CASE v1 VOLDIR    write the first version into a pod's volume
    pull-gen.py CASE v2 VOLDIR    change it in place into the second version

CASE is one of:
  log      logs/train.log: a training log of 42 MB (timestamp, step, loss, lr,
           GPU memory, ... with varying numbers; eval/checkpoint/warning lines
           now and then); v2 appends about 2% (the lines that follow).
  sqlite   db/metrics.sqlite: ~150,000 rows (7 columns, one index),
           journal_mode=DELETE; v2 updates 3,000 contiguous rows and inserts
           1,000, then closes the database (no journal left behind).
  results  results/run-NN/*.csv|*.json: 300 files of 5-50 KB; v2 changes a
           tenth of them: 20 rewritten with small edits, 6 new, 4 removed.

Everything is seeded (random.Random with string seeds, which do not depend on
PYTHONHASHSEED), so the bytes are the same on every run. File times are set
explicitly: v1 files get T0, files written by v2 get T1 = T0 + 1 day, so that
rsync's quick check (size + mtime) always sees a changed file as changed,
however fast the two versions are written.

On success prints one line: "KEY=VALUE ..." facts about what was written
(sizes, counts), which pull.sh shows under its table.
"""
import json
import math
import os
import random
import sqlite3
import sys
import time

T0 = 1717228800  # 2024-06-01T08:00:00Z
T1 = T0 + 86400
SEED = "orbit-sync pull bench"


def set_time(path, t):
    os.utime(path, (t, t))


def write_file(path, data, t):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    set_time(path, t)


# --- log ---------------------------------------------------------------------

LOG = "logs/train.log"
LOG_V1_BYTES = 42_000_000
LOG_GROWTH = 0.02
TOTAL_STEPS = 500_000


def log_lines():
    """The training log, line by line, forever (deterministic)."""
    r = random.Random(SEED + ":log")
    t = float(T0)
    loss = 10.8
    scale = 65536
    step = 0
    epoch = 0
    steps_per_epoch = 61_440
    host = "pod-7f3c9d-worker-0"
    yield (f"{fmt_ts(t)} | INFO | main | starting run exp-0427 on {host}, "
           f"8 x A100-SXM4-40GB, world_size=8, seed=1234\n")
    yield (f"{fmt_ts(t)} | INFO | main | config: model=gpt-1.3b seq_len=2048 "
           f"global_batch=512 lr=3.0e-04 warmup=2000 steps={TOTAL_STEPS}\n")
    while True:
        step += 1
        t += r.uniform(0.37, 0.47)
        if step % steps_per_epoch == 1:
            epoch += 1
            yield f"{fmt_ts(t)} | INFO | data | epoch {epoch} begins, shuffling 31457280 samples\n"
        # loss: fast decay, then a slow one, with noise
        target = 2.1 + 8.7 * (0.5 ** (step / 1500)) + 0.6 * (0.5 ** (step / 60000))
        loss = target + r.gauss(0, 0.035 + 0.02 * (0.5 ** (step / 5000)))
        if step <= 2000:
            lr = 3.0e-4 * step / 2000
        else:
            p = (step - 2000) / (TOTAL_STEPS - 2000)
            lr = 3.0e-5 + 0.5 * (3.0e-4 - 3.0e-5) * (1 + math.cos(math.pi * min(p, 1.0)))
        gn = abs(r.gauss(0.9, 0.25)) + (3.0 if r.random() < 0.002 else 0.0)
        tok = r.gauss(48_250, 650)
        mem = 36.2 + r.random() * 2.9
        util = r.randint(88, 100)
        yield (f"{fmt_ts(t)} | INFO | train | epoch {epoch} | step {step:>7d}/{TOTAL_STEPS} "
               f"| loss {loss:.6f} | grad_norm {gn:.4f} | lr {lr:.4e} | tok/s {tok:,.1f} "
               f"| gpu_mem {mem:.2f} GiB | gpu_util {util}% | data_ms {r.uniform(0.8, 4.5):.2f}\n")
        if r.random() < 0.0006:
            scale //= 2
            yield (f"{fmt_ts(t)} | WARNING | amp | gradient overflow at step {step}, "
                   f"skipping update, loss scale {scale * 2} -> {scale}\n")
        elif step % 2000 == 0 and scale < 65536:
            scale *= 2
        if step % 1000 == 0:
            t += r.uniform(25, 40)
            vl = loss + r.gauss(0.05, 0.02)
            yield (f"{fmt_ts(t)} | INFO | eval | step {step} | val_loss {vl:.6f} "
                   f"| val_ppl {2.718281828 ** vl:.3f} | acc@1 {r.uniform(0.3, 0.6):.4f} "
                   f"| samples 16384 | took {r.uniform(25, 40):.1f} s\n")
        if step % 5000 == 0:
            t += r.uniform(8, 15)
            yield (f"{fmt_ts(t)} | INFO | ckpt | saved checkpoints/step_{step:07d}.pt "
                   f"(2.61 GiB) in {r.uniform(8, 15):.1f} s\n")


def fmt_ts(t):
    ms = int((t - int(t)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{ms:03d}Z"


def log_v1(vol):
    path = os.path.join(vol, LOG)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = 0
    lines = 0
    with open(path, "wb") as f:
        for line in log_lines():
            b = line.encode()
            f.write(b)
            n += len(b)
            lines += 1
            if n >= LOG_V1_BYTES:
                break
    set_time(path, T0)
    print(f"log_bytes={n} log_lines={lines}")


def log_v2(vol):
    path = os.path.join(vol, LOG)
    have = os.path.getsize(path)
    n = 0
    gen = log_lines()
    for line in gen:  # skip what v1 holds
        n += len(line.encode())
        if n >= have:
            break
    if n != have:
        sys.exit(f"pull-gen: {path} is {have} bytes, not a v1 log")
    added = 0
    lines = 0
    with open(path, "ab") as f:  # append only, as a logger does
        for line in gen:
            b = line.encode()
            f.write(b)
            added += len(b)
            lines += 1
            if added >= LOG_GROWTH * have:
                break
    set_time(path, T1)
    print(f"log_v1_bytes={have} appended_bytes={added} appended_lines={lines}")


# --- sqlite ------------------------------------------------------------------

DB = "db/metrics.sqlite"
ROWS = 150_000
UPDATE_FIRST, UPDATE_ROWS = 70_001, 3_000
INSERT_ROWS = 1_000
TAGS = ["train", "train", "train", "eval", "eval-ood", "probe", "ablation-a", "ablation-b"]


def sample_row(r, i):
    run = f"run-{i % 8:02d}"
    step = i // 8 * 10
    ts = T0 + i * 0.41 + r.random() * 0.01
    loss = 2.0 + 8.0 * 0.5 ** (step / 20000) + r.gauss(0, 0.05)
    acc = min(1.0, max(0.0, 0.9 - 0.8 * 0.5 ** (step / 30000) + r.gauss(0, 0.01)))
    tag = r.choice(TAGS)
    return (i, run, step, ts, round(loss, 6), round(acc, 5), tag)


def connect(path):
    db = sqlite3.connect(path)
    mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    assert mode == "delete", mode
    return db


def sqlite_v1(vol):
    path = os.path.join(vol, DB)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)
    r = random.Random(SEED + ":sqlite")
    db = connect(path)
    db.execute("""CREATE TABLE samples(
        id INTEGER PRIMARY KEY, run TEXT NOT NULL, step INTEGER NOT NULL,
        ts REAL NOT NULL, loss REAL, acc REAL, tag TEXT)""")
    db.execute("CREATE INDEX samples_run_step ON samples(run, step)")
    with db:
        db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)",
                       (sample_row(r, i) for i in range(1, ROWS + 1)))
    db.close()
    set_time(path, T0)
    print(f"db_bytes={os.path.getsize(path)} rows={ROWS}")


def sqlite_v2(vol):
    path = os.path.join(vol, DB)
    r = random.Random(SEED + ":sqlite-v2")
    db = connect(path)
    with db:
        # A contiguous stretch re-scored (e.g. a relabelled range of samples).
        db.executemany(
            "UPDATE samples SET loss = ?, acc = ?, tag = ? WHERE id = ?",
            ((round(2.0 + r.random() * 3, 6), round(r.random(), 5), "rescored", i)
             for i in range(UPDATE_FIRST, UPDATE_FIRST + UPDATE_ROWS)))
        db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)",
                       (sample_row(r, i) for i in range(ROWS + 1, ROWS + INSERT_ROWS + 1)))
    db.close()
    for leftover in (path + "-journal", path + "-wal", path + "-shm"):
        if os.path.exists(leftover):
            sys.exit(f"pull-gen: {leftover} left behind")
    set_time(path, T1)
    print(f"db_bytes={os.path.getsize(path)} updated={UPDATE_ROWS} inserted={INSERT_ROWS}")


# --- results -----------------------------------------------------------------

RUNS = 10
CSV_PER_RUN = 18
JSON_PER_RUN = 12
EDITED, NEW, REMOVED = 20, 6, 4


def result_names():
    names = []
    for k in range(RUNS):
        names += [f"results/run-{k:02d}/eval-{j:03d}.csv" for j in range(CSV_PER_RUN)]
        names += [f"results/run-{k:02d}/summary-{j:03d}.json" for j in range(JSON_PER_RUN)]
    return names


def csv_row(r, step):
    vals = [r.gauss(1.5, 0.4), r.random(), r.random(), r.random(), r.random(), r.random(),
            r.uniform(5, 80)]
    return (f"{step},{vals[0]:.6f},{vals[1]:.6f},{vals[2]:.6f},{vals[3]:.6f},"
            f"{vals[4]:.6f},{vals[5]:.6f},{vals[6]:.3f}\n")


CSV_HEADER = "step,loss,acc,f1,precision,recall,auc,latency_ms\n"


def make_csv(r, size):
    out = [CSV_HEADER]
    n = len(CSV_HEADER)
    step = 0
    while n < size:
        step += r.choice([50, 100, 100, 200])
        row = csv_row(r, step)
        out.append(row)
        n += len(row)
    return "".join(out)


def make_json(r, name, size):
    doc = {
        "run": name.split("/")[1],
        "status": "running",
        "config": {"model": "resnet-152", "batch": 256, "lr": 0.1, "epochs": 90,
                   "augment": ["crop", "flip", "mixup"], "seed": r.randint(0, 99999)},
        "per_class": [],
    }
    c = 0
    # Measure every 8 entries (dumping the whole document after each one is slow).
    while c % 8 or len(json.dumps(doc, indent=2)) < size:
        doc["per_class"].append({
            "class": f"c{c:04d}", "support": r.randint(20, 500),
            "precision": round(r.random(), 5), "recall": round(r.random(), 5),
            "f1": round(r.random(), 5), "confusions": [r.randint(0, 999) for _ in range(3)],
        })
        c += 1
    return json.dumps(doc, indent=2) + "\n"


def make_result(name):
    r = random.Random(SEED + ":" + name)
    size = r.randint(5_000, 50_000)
    if name.endswith(".csv"):
        return make_csv(r, size)
    return make_json(r, name, size)


def edit_result(name, text):
    """Small edits: a few values changed, a few rows/entries added."""
    r = random.Random(SEED + ":edit:" + name)
    if name.endswith(".csv"):
        lines = text.splitlines(keepends=True)
        for _ in range(r.randint(2, 6)):
            i = r.randrange(1, len(lines))
            step = lines[i].split(",", 1)[0]
            lines[i] = csv_row(r, int(step))
        step = int(lines[-1].split(",", 1)[0])
        for _ in range(r.randint(3, 15)):
            step += 100
            lines.append(csv_row(r, step))
        return "".join(lines)
    doc = json.loads(text)
    doc["status"] = "final"
    for _ in range(r.randint(2, 6)):
        e = r.choice(doc["per_class"])
        e["precision"] = round(r.random(), 5)
        e["f1"] = round(r.random(), 5)
    doc["final_metrics"] = {"top1": round(r.random(), 5), "top5": round(r.random(), 5)}
    return json.dumps(doc, indent=2) + "\n"


def results_v1(vol):
    total = 0
    names = result_names()
    for name in names:
        data = make_result(name).encode()
        write_file(os.path.join(vol, name), data, T0)
        total += len(data)
    print(f"files={len(names)} bytes={total}")


def results_v2(vol):
    names = result_names()
    r = random.Random(SEED + ":results-v2")
    picked = r.sample(names, EDITED + REMOVED)
    edited, removed = picked[:EDITED], picked[EDITED:]
    for name in edited:
        path = os.path.join(vol, name)
        with open(path) as f:
            text = f.read()
        write_file(path, edit_result(name, text).encode(), T1)  # rewritten whole
    for name in removed:
        os.remove(os.path.join(vol, name))
    new = []
    for j in range(NEW):
        k = r.randrange(RUNS)
        ext = "csv" if j % 2 == 0 else "json"
        kind = "eval" if ext == "csv" else "summary"
        new.append(f"results/run-{k:02d}/{kind}-final-{j:02d}.{ext}")
    new_bytes = 0
    for name in new:
        data = make_result(name).encode()
        new_bytes += len(data)
        write_file(os.path.join(vol, name), data, T1)
    print(f"edited={len(edited)} new={len(new)} new_bytes={new_bytes} removed={len(removed)}")


CASES = {
    "log": (log_v1, log_v2),
    "sqlite": (sqlite_v1, sqlite_v2),
    "results": (results_v1, results_v2),
}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in CASES or sys.argv[2] not in ("v1", "v2"):
        sys.exit(__doc__)
    case, version, vol = sys.argv[1:]
    os.makedirs(vol, exist_ok=True)
    CASES[case][0 if version == "v1" else 1](vol)


if __name__ == "__main__":
    main()
