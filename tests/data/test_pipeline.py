"""Document sources, tokenizers and lane streaming."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_brt import data


def _docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 200, n).astype(np.int32) for n in lengths]


def _lane_streams(batches, batch_size):
    """Re-assembles each lane's token stream (inputs + last target) document by document."""
    streams = [[] for _ in range(batch_size)]
    for x, y, w in batches:
        for i in range(batch_size):
            if x["start_of_sequence"][i]:
                streams[i].append([])
            n = int(w[i].sum())
            if n:
                assert streams[i], "a lane produced tokens before starting a document"
                streams[i][-1].append((x["token_ids"][i, :n], y[i, :n]))
    return streams


def test_lanes_continue_documents_across_batches_and_flag_starts():
    docs = _docs([10, 3, 25, 7, 1, 12])
    batches = list(data.lane_batches(iter(docs), batch_size=2, segment_length=4, bos_id=1))
    seen = []
    for lane in _lane_streams(batches, 2):
        for pieces in lane:
            if not pieces:
                continue
            inputs = np.concatenate([p[0] for p in pieces])
            targets = np.concatenate([p[1] for p in pieces])
            assert inputs[0] == 1  # BOS
            np.testing.assert_array_equal(inputs[1:], targets[:-1])  # next-token targets
            seen.append(targets)
    # Every document appears exactly once, whole, in order within its lane.
    assert sorted(map(tuple, seen)) == sorted(map(tuple, docs))


def test_padding_is_masked_and_shapes_are_static():
    batches = list(data.lane_batches(iter(_docs([5, 9])), batch_size=2, segment_length=8))
    for x, y, w in batches:
        assert x["token_ids"].shape == y.shape == w.shape == (2, 8)
        np.testing.assert_array_equal(x["padding_mask"], w > 0)
        assert not np.any(x["token_ids"][w == 0]) and not np.any(y[w == 0])
    x, y, w = batches[0]
    np.testing.assert_array_equal(w.sum(axis=1), [5, 8])  # doc 0 ends inside the segment
    assert x["start_of_sequence"].all()
    x, y, w = batches[1]
    assert x["start_of_sequence"][0] and not x["start_of_sequence"][1]  # lane 0 idles, lane 1 goes on
    assert w[0].sum() == 0 and w[1].sum() == 1


def test_lane_dataset_is_deterministic_with_a_seed_and_shuffles_documents():
    texts = [f"document {i} " * (i + 3) for i in range(30)]
    source = data.IterableSource(texts)
    tok = data.ByteTokenizer()

    def first(seed, n=6):
        ds = data.lane_dataset(source, tok, 3, 16, repeat=True, shuffle_buffer=30, seed=seed)
        return [x["token_ids"] for x, _, _ in ds.take(n).as_numpy_iterator()]

    a, b, c = first(1), first(1), first(2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))
    # Documents are shuffled, never cut up: each lane starts with the BOS of a whole document.
    assert (a[0][:, 0] == data.ByteTokenizer.bos_id).all()


def test_input_context_shards_documents():
    texts = [f"doc{i}" for i in range(8)]
    tok = data.ByteTokenizer()
    seen = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index)
        ds = data.lane_dataset(data.IterableSource(texts), tok, 1, 8, input_context=context)
        seen.append({tok.detokenize(y[0]) for _, y, _ in ds.as_numpy_iterator()})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(texts)


def test_byte_tokenizer_round_trip_and_config():
    tok = data.ByteTokenizer()
    text = "déf f():\n\treturn 'ü'  # 😀"
    ids = tok(tf.constant(text)).numpy()
    assert len(ids) == len(text.encode()) and ids.min() >= 3
    assert tok.detokenize(ids) == text
    batch = tok(tf.constant([text, "ab"]))  # a batch: one ragged row per string, same ids
    np.testing.assert_array_equal(batch[0].numpy(), ids)
    np.testing.assert_array_equal(batch[1].numpy(), np.frombuffer(b"ab", np.uint8) + 3)
    revived = data.ByteTokenizer.from_config(json.loads(json.dumps(tok.get_config())))
    np.testing.assert_array_equal(revived(tf.constant(text)).numpy(), ids)


@pytest.fixture(scope="module")
def sentencepiece_proto():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz_"), rng.integers(2, 9))) for _ in range(500)]
    texts = [f"def {rng.choice(words)}(x, y):\n    return x * {i} + {rng.choice(words)}  # {rng.choice(words)}\n"
             for i in range(2000)]
    return data.train_sentencepiece(texts, vocabulary_size=600)


def test_sentencepiece_round_trip_in_tf_data_and_through_config(sentencepiece_proto, tmp_path):
    tok = data.SentencePieceTokenizer(sentencepiece_proto)
    text = "def function_7(x, y):\n\treturn x * 7 + y  # héllo\n"
    ids = tok(tf.constant(text)).numpy()
    assert tok.detokenize(ids) == text  # exact, whitespace and unseen characters included
    assert len(ids) < len(text.encode())  # it does compress
    mapped = next(iter(tf.data.Dataset.from_tensor_slices([text]).map(tok)))
    np.testing.assert_array_equal(mapped.numpy(), ids)
    config = json.loads(json.dumps(tok.get_config()))
    revived = data.SentencePieceTokenizer.from_config(config)
    np.testing.assert_array_equal(revived(tf.constant(text)).numpy(), ids)
    assert 300 < tok.vocabulary_size <= 600


def test_folder_source_reads_recursively_counts_encoding_errors_and_splits(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first document")
    (tmp_path / "two.txt").write_bytes(b"caf\xe9 latin-1 bytes")
    (tmp_path / "skip.md").write_text("not matched")
    source = data.FolderSource(str(tmp_path), pattern="*.txt")
    texts = list(source.documents())
    assert sorted(texts) == ["caf\ufffd latin-1 bytes", "first document"]
    assert source.stats == {"files": 2, "files_with_encoding_errors": 1, "skipped_not_text": 0,
                            "unreadable_files": 0, "bytes": len("first document") + 18}
    for i in range(40):
        (tmp_path / f"doc{i}.txt").write_text(f"text {i}")
    train = data.FolderSource(str(tmp_path), pattern="*.txt", split="train", held_out_fraction=0.25)
    test = data.FolderSource(str(tmp_path), pattern="*.txt", split="test", held_out_fraction=0.25)
    assert set(train.files).isdisjoint(test.files) and len(train.files) + len(test.files) == 42
    assert test.files == data.FolderSource(str(tmp_path), "*.txt", "test", 0.25).files  # stable


def test_small_folders_hold_out_the_tail_of_every_file_and_the_parts_make_up_the_files(tmp_path):
    texts = ["é" * 50 + "abc" * 30, "x" * 333, "über " * 40]
    for i, text in enumerate(texts):
        (tmp_path / f"f{i}.txt").write_text(text, encoding="utf-8")
    train = data.FolderSource(str(tmp_path), split="train", held_out_fraction=0.2)
    test = data.FolderSource(str(tmp_path), split="test", held_out_fraction=0.2)
    assert train.split_mode == test.split_mode == "tails" and "too few files" in test.describe_split()
    heads, tails = list(train.documents()), list(test.documents())
    assert [h + t for h, t in zip(heads, tails)] == texts  # no character cut in two, nothing lost
    for text, tail in zip(texts, tails):
        assert abs(len(tail.encode()) - 0.2 * len(text.encode())) <= 2
    assert train.stats["bytes"] + test.stats["bytes"] == sum(len(t.encode()) for t in texts)
    # With enough files, whole files are held out as before.
    for i in range(40):
        (tmp_path / f"more{i}.txt").write_text(f"text {i}")
    assert data.FolderSource(str(tmp_path), split="test").split_mode == "files"


def test_encodings_are_read_as_given_and_files_that_are_not_text_are_skipped(tmp_path):
    latin = "café crème brûlée " * 10
    (tmp_path / "latin.txt").write_bytes(latin.encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02PNG" * 20)
    with pytest.warns(UserWarning, match="binary.txt: not a text file"):
        as_latin = data.FolderSource(str(tmp_path), encoding="latin-1")
    assert list(as_latin.documents()) == [latin]  # named once, not at every pass
    # Bytes are those of the file, not of its UTF-8 re-encoding.
    assert as_latin.stats["bytes"] == len(latin.encode("latin-1")) == as_latin.last_document_bytes
    assert as_latin.stats["files_with_encoding_errors"] == 0 and as_latin.stats["skipped_not_text"] == 1
    with pytest.warns(UserWarning):
        as_utf8 = data.FolderSource(str(tmp_path))
    (text,) = list(as_utf8.documents())
    assert "\ufffd" in text and as_utf8.stats["files_with_encoding_errors"] == 1
    with pytest.raises(ValueError, match="encoding='klingon'"):
        data.FolderSource(str(tmp_path), encoding="klingon")
    with pytest.raises(ValueError, match="held_out_fraction=1.5"):
        data.FolderSource(str(tmp_path), split="test", held_out_fraction=1.5)


def test_folder_source_errors(tmp_path):
    with pytest.raises(ValueError, match="path='/no/such/folder'"):
        data.FolderSource("/no/such/folder")
    with pytest.raises(ValueError, match="No file matching"):
        data.FolderSource(str(tmp_path), pattern="*.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds readable text"):
        data.FolderSource(str(tmp_path), pattern="*.txt")


def test_stdlib_corpus_is_split_by_file_and_deterministic():
    train, test = data.stdlib_source("train"), data.stdlib_source("test")
    assert len(train.files) > 500 and 10 < len(test.files) < len(train.files) / 5
    assert set(train.files).isdisjoint(test.files)
    assert data.stdlib_source("test").files == test.files
    assert all(f.endswith(".py") and "site-packages" not in f for f in test.files)


def test_tfds_source_offline_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        source = data.TFDSSource("pg19", split="train")
        texts = list(source.documents())
    assert source.feature == "book_text" and len(texts) == 4 and all(isinstance(t, str) for t in texts)
    batches = list(data.lane_batches((np.frombuffer(t.encode(), np.uint8) + 3 for t in texts), 2, 8))
    assert sum(int(w.sum()) for _, _, w in batches) == sum(len(t.encode()) for t in texts)


def test_tfds_source_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ValueError, match=r"tfds build pg19 --data_dir") as error:
        data.TFDSSource("pg19", data_dir=str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_tfds_text_feature_by_name():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        assert data.TFDSSource("pg19", feature="book_title").feature == "book_title"
        with pytest.raises(ValueError, match="feature='no_such_feature'"):
            data.TFDSSource("pg19", feature="no_such_feature")
