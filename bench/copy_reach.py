"""How far back must a model look to copy? Byte statistics of a corpus, no model.

For every byte of the held-out documents, the distance to the nearest earlier place in the
same document where the same `k + 1` bytes occur (the byte and the `k` before it): the byte
can be predicted by copying from there. Bytes are counted by that nearest distance, in the
ranges that the byte-level models of `bench/quality.py` can reach: Slide's window
(W = 512: at least 512 bytes back), XL:2048's (at least 2048, up to 4096), and beyond, where
only the recurrent state reaches. A corpus whose copies lie mostly within 4 KB rewards a long
window; one with many copies beyond rewards the state.

    python bench/copy_reach.py --data directories --data-dir DIR --documents 64
    python bench/copy_reach.py --data stdlib-directories --documents 1000
"""

import argparse
import datetime
import json
import os
import platform

import numpy as np

RANGES = ((1, 512), (512, 2048), (2048, 4096), (4096, 32768), (32768, None))


def gram_hashes(data, k):
    """The `(k + 1)`-byte strings of `data` (uint8) as 64-bit hashes, one per byte `i >= k`."""
    n = len(data) - k
    grams = np.zeros(max(n, 0), np.uint64)
    with np.errstate(over="ignore"):  # a hash modulo 2**64
        for offset in range(k + 1):
            grams = grams * np.uint64(1099511628211) + data[offset:offset + n].astype(np.uint64)
    return grams


def copy_distances(grams):
    """For each of `grams`, the distance back to the nearest earlier equal one, or 0."""
    order = np.argsort(grams, kind="stable")  # equal grams stay in position order
    same = grams[order][1:] == grams[order][:-1]
    distance = np.zeros(len(grams), np.int64)
    distance[order[1:][same]] = order[1:][same] - order[:-1][same]
    return distance


def nearest_copy_distance(data, k):
    """For each byte `i >= k` of `data` (uint8), the distance to the nearest earlier `j`
    with `data[j - k : j + 1] == data[i - k : i + 1]`, or 0 where there is none."""
    return copy_distances(gram_hashes(data, k))


def histogram(documents, k, own_only=False):
    """Counts of bytes by the range of their nearest copy's distance, then of bytes with no
    earlier copy. With `own_only`, a copy counts only where its `k + 1` bytes occur in no
    other document read: text the document itself introduced (its names, its strings), not
    boilerplate that a model learns into its weights."""
    grams = [gram_hashes(np.frombuffer(text.encode("utf-8"), np.uint8), k) for text in documents]
    if own_only:
        values, frequency = np.unique(np.concatenate([np.unique(g) for g in grams]),
                                      return_counts=True)
        shared = values[frequency > 1]
    counts = np.zeros(len(RANGES) + 1, np.int64)  # the ranges, then "no earlier copy"
    for g in grams:
        distance = copy_distances(g)
        if own_only:
            distance[np.isin(g, shared)] = 0
        counts[-1] += int((distance == 0).sum())
        for index, (low, high) in enumerate(RANGES):
            inside = distance >= low if high is None else (distance >= low) & (distance < high)
            counts[index] += int(inside.sum())
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("stdlib", "stdlib-directories", "directories"), default="stdlib",
                        help="as bench/quality.py's --data")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--documents", type=int, default=64, help="held-out documents to read")
    parser.add_argument("--context", type=int, nargs="+", default=[8, 16],
                        help="k: bytes of context that must match before the copied byte")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if min(args.context) < 0:
        raise ValueError(f"`--context` must be at least 0. Received: --context={args.context}")
    if args.documents < 1:
        raise ValueError(f"`--documents` must be at least 1. Received: --documents={args.documents}")
    if args.data == "directories":
        if not args.data_dir or not os.path.isdir(args.data_dir):
            raise ValueError("`--data directories` needs `--data-dir`, an existing folder. "
                             f"Received: --data-dir={args.data_dir}")
        from quality import source_directories  # bench/ is on the path when run as a script

        source = source_directories(args.data_dir, "test")
    elif args.data == "stdlib-directories":
        from quality import stdlib_directories

        source = stdlib_directories("test")
    else:
        from keras_brt.data import stdlib_source

        source = stdlib_source("test")
    documents = []
    for text in source.documents():
        documents.append(text)
        if len(documents) == args.documents:
            break
    size = sum(len(t.encode("utf-8")) for t in documents)
    names = [f"[{low}, {high or 'end'})" for low, high in RANGES] + ["none"]
    print(f"{len(documents)} documents, {size} bytes of {source.name}; share of bytes by the "
          "distance to their nearest copy")
    print(f"{'k':>4}" + "".join(f"{n:>15}" for n in names))
    rows = []
    for own_only in (False, True):
        if own_only:
            print("the same, counting only copies of strings that occur in no other document read")
        for k in args.context:
            counts = histogram(documents, k, own_only)
            shares = counts / counts.sum()
            rows.append({"context": k, "own_only": own_only, "bytes": int(counts.sum()),
                         "shares": dict(zip(names, (round(float(s), 4) for s in shares)))})
            print(f"{k:>4}" + "".join(f"{s:>15.3f}" for s in shares))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "machine": platform.node(), "data": args.data,
                       "data_dir": args.data_dir, "source": source.name, "documents": len(documents),
                       "rows": rows}, f, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
