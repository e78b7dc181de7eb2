"""SELFIES vocabulary: encoding, rejects with reasons, tensors, and exact round trips."""

import pytest

from molvae import chem
from molvae.tokens import EncodeError, Vocabulary, smiles_to_selfies, selfies_to_smiles


@pytest.fixture(scope="module")
def vocab(train_smiles):
    return Vocabulary.build(smiles_to_selfies(s) for s in train_smiles[:5000])


def test_vocab_has_specials_first_and_saves(vocab, tmp_path):
    assert vocab.tokens[:3] == ["[pad]", "[bos]", "[eos]"]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab


def test_encode_decode_and_tensor(vocab):
    ids = vocab.encode("CC(=O)Oc1ccccc1C(=O)O")
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    t = vocab.to_tensor([ids, vocab.encode("CCO")])
    assert t.shape == (2, vocab.seq_len)
    assert (t[1, 5:] == vocab.pad_id).all()
    assert vocab.decode(t[0].tolist()) == "CC(=O)Oc1ccccc1C(=O)O"
    assert vocab.decode(t[1].tolist()) == "CCO"


def test_unknown_token_is_named(vocab):
    with pytest.raises(EncodeError, match=r"\[Se\]"):
        vocab.encode("C[Se]C")


def test_too_long_is_rejected(vocab):
    with pytest.raises(EncodeError, match="too long"):
        vocab.encode("C" * 300)


def test_bad_vocab_file(tmp_path):
    from molvae.errors import MolvaeError

    p = tmp_path / "v.json"
    p.write_text("{not json")
    with pytest.raises(MolvaeError, match="v.json"):
        Vocabulary.load(p)
    with pytest.raises(MolvaeError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")


def _to_selfies(smiles):
    return smiles_to_selfies(smiles)


def _round_trip(args):
    smiles, selfies, tokens, max_len = args
    v = Vocabulary(tokens, max_len)
    ids = v.encode_selfies(selfies)
    back = selfies_to_smiles(v.decode_selfies(ids))
    return chem.canonical(back) == chem.canonical(smiles)


def test_bundled_sample_and_10k_test_molecules_round_trip_exactly(train_smiles):
    """SMILES -> SELFIES -> ids -> SELFIES -> SMILES gives the same canonical SMILES for all."""
    from molvae.data import bundled

    test = bundled("test")[:10_000]
    everything = train_smiles + test
    assert len(everything) == 110_000
    # Each molecule is SELFIES-encoded once, in parallel (the vocabulary is built from the
    # same strings the round trip encodes): encoding is half of the round trip's cost.
    selfies = chem.parallel_map(_to_selfies, everything, desc="selfies", progress=False)
    vocab = Vocabulary.build(selfies)
    args = [(s, f, vocab.tokens, vocab.max_len) for s, f in zip(everything, selfies)]
    ok = chem.parallel_map(_round_trip, args, desc="round trip", progress=False)
    failures = [s for s, good in zip(everything, ok) if not good]
    assert failures == []


def test_length_is_reported_before_an_unknown_token(vocab):
    # A 302-atom macrocycle needs [Ring3], a token drug-sized molecules never use: the
    # reason a user needs is the length, not the token.
    with pytest.raises(EncodeError, match=f"too long: .* > max_len {vocab.max_len}"):
        vocab.encode("C1" + "C" * 300 + "C1")


def test_decoding_is_cached_for_model_sized_strings_only(vocab):
    # A converged search decodes the same tokens again and again: the second decode of a
    # sequence must come from the cache, give the same molecule, and a hostile giant string
    # must neither be remembered nor change the answer.
    from molvae import tokens

    tokens._selfies_to_canonical.cache_clear()
    ids = vocab.encode("CC(=O)Oc1ccccc1C(=O)O")
    first = vocab.decode(ids)
    hits = tokens._selfies_to_canonical.cache_info().hits
    assert vocab.decode(ids) == first == "CC(=O)Oc1ccccc1C(=O)O"
    assert tokens._selfies_to_canonical.cache_info().hits == hits + 1
    giant = "[C]" * (tokens.DECODE_CACHE_MAX_CHARS // 3 + 10)
    size = tokens._selfies_to_canonical.cache_info().currsize
    assert tokens.selfies_to_canonical(giant) == "C" * (tokens.DECODE_CACHE_MAX_CHARS // 3 + 10)
    assert tokens._selfies_to_canonical.cache_info().currsize == size
    for malformed in ("[Xx][=Branch9]", "", "[C][C"):  # twice: the cached answer too
        assert tokens.selfies_to_canonical(malformed) is None
        assert tokens.selfies_to_canonical(malformed) is None
