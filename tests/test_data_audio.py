"""Audio loading (any rate and channel count -> 16 kHz mono) and the acoustic conditions,
each checked against its definition: SNR, spectral slope, pass band, decay time."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from speechmerge.data.audio import audio_duration, load_audio, resample, write_wav
from speechmerge.data.conditions import (
    Condition,
    apply_condition,
    babble_noise,
    mix_at_snr,
    pink_noise,
    room_impulse_response,
    telephone_band,
    white_noise,
)
from speechmerge.errors import SpeechmergeError


def sine(frequency: float, seconds: float, rate: int) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def rms_db(samples: np.ndarray) -> float:
    return 10 * np.log10(np.mean(samples.astype(np.float64) ** 2))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_becomes_16_khz_with_the_same_pitch_and_length(tmp_path, rate):
    path = tmp_path / "tone.flac"
    soundfile.write(path, sine(440.0, 1.0, rate), rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 16000) <= 1
    assert peak_frequency(audio) == pytest.approx(440.0, abs=1.5)
    middle = audio[2000:-2000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(np.sqrt(0.5), rel=0.02)


def test_channels_are_averaged(tmp_path):
    left, right = sine(300.0, 0.5, 16000), sine(1200.0, 0.5, 16000)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav"), (left + right) / 2, atol=1e-6)


def test_resample_by_the_reduced_ratio_matches_scipy_polyphase():
    from scipy.signal import resample_poly

    x = np.random.default_rng(0).standard_normal(44100).astype(np.float32)
    np.testing.assert_allclose(resample(x, 44100), resample_poly(x, 160, 441), atol=1e-6)
    np.testing.assert_array_equal(resample(x, 16000), x)


def test_write_wav_round_trips_within_16_bit_precision(tmp_path):
    x = 0.5 * sine(250.0, 0.25, 16000)
    write_wav(tmp_path / "x.wav", x)
    info = soundfile.info(tmp_path / "x.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "x.wav"), x, atol=1 / 32768 + 1e-6)
    assert audio_duration(tmp_path / "x.wav") == pytest.approx(0.25)


def test_unreadable_audio_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"nonsense")
    with pytest.raises(SpeechmergeError, match=r"bad\.wav: unreadable audio .*use WAV, FLAC, OGG or MP3"):
        load_audio(path)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 25.0])
def test_noise_is_mixed_at_the_requested_snr(snr):
    rng = np.random.default_rng(1)
    speech = sine(500.0, 1.0, 16000)
    noise = pink_noise(16000, rng)
    mixed = mix_at_snr(speech, noise, snr)
    assert rms_db(speech) - rms_db(mixed - speech) == pytest.approx(snr, abs=1e-3)


def spectral_slope(noise: np.ndarray) -> float:
    """Slope of log power against log frequency (100 Hz - 7 kHz), averaged over segments."""
    segments = noise[: len(noise) // 1024 * 1024].reshape(-1, 1024)
    power = np.mean(np.abs(np.fft.rfft(segments * np.hanning(1024), axis=1)) ** 2, axis=0)
    frequencies = np.fft.rfftfreq(1024, 1 / 16000)
    band = (frequencies > 100) & (frequencies < 7000)
    return float(np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0])


def test_white_noise_is_flat_and_pink_noise_falls_as_one_over_f():
    rng = np.random.default_rng(2)
    assert spectral_slope(white_noise(16000 * 8, rng)) == pytest.approx(0.0, abs=0.1)
    assert spectral_slope(pink_noise(16000 * 8, rng)) == pytest.approx(-1.0, abs=0.1)


def test_babble_is_the_sum_of_the_talkers_at_equal_loudness():
    rng = np.random.default_rng(3)
    talkers = [sine(200.0, 0.7, 16000), 5.0 * sine(3100.0, 1.3, 16000)]
    babble = babble_noise(8000, rng, talkers)
    spectrum = np.abs(np.fft.rfft(babble))
    bins = np.fft.rfftfreq(8000, 1 / 16000)
    low, high = spectrum[np.argmin(np.abs(bins - 200.0))], spectrum[np.argmin(np.abs(bins - 3100.0))]
    assert low == pytest.approx(high, rel=0.05)  # each talker scaled to unit RMS
    assert rms_db(babble) == pytest.approx(10 * np.log10(2.0), abs=0.2)


@pytest.mark.parametrize(
    "frequency, lowest, highest",
    [(100.0, -60.0, -15.0), (1000.0, -1.0, 1.0), (2500.0, -1.0, 1.0), (6000.0, -200.0, -30.0)],
)
def test_telephone_band_passes_300_to_3400_hz_only(frequency, lowest, highest):
    tone = sine(frequency, 1.0, 16000)
    out = telephone_band(tone)
    assert len(out) == len(tone)
    gain = rms_db(out[4000:-1000]) - rms_db(tone[4000:-1000])
    assert lowest <= gain <= highest


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_room_impulse_response_decays_60_db_in_rt60(rt60):
    """Schroeder backward integration of h² gives the energy decay curve; its -5..-25 dB slope,
    extrapolated to -60 dB (the T20 method of ISO 3382), is the reverberation time."""
    h = room_impulse_response(rt60, np.random.default_rng(4))[1:]
    decay = 10 * np.log10(np.cumsum((h**2)[::-1])[::-1] / np.sum(h**2))
    times = np.arange(len(h)) / 16000
    fit = (decay <= -5) & (decay >= -25)
    slope = np.polyfit(times[fit], decay[fit], 1)[0]
    assert -60.0 / slope == pytest.approx(rt60, rel=0.1)
    full = room_impulse_response(rt60, np.random.default_rng(4))
    assert full[0] == 1.0 and np.sum(full[1:] ** 2) == pytest.approx(1.0, rel=1e-4)


def test_conditions_are_deterministic_from_the_generator_and_never_clip():
    speech = 0.9 * sine(440.0, 1.0, 16000)
    condition = Condition(noise="white", snr_db=-10.0, rt60=0.4, telephone=True)
    first = apply_condition(speech, condition, np.random.default_rng(5))
    again = apply_condition(speech, condition, np.random.default_rng(5))
    other = apply_condition(speech, condition, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.max(np.abs(first)) <= 0.95 + 1e-6
    assert len(first) == len(speech) + int(0.4 * 16000) - 1


def test_clean_condition_is_identity():
    speech = 0.5 * sine(440.0, 0.5, 16000)
    np.testing.assert_array_equal(apply_condition(speech, Condition(), np.random.default_rng(0)), speech)
    assert Condition().describe() == "clean"
    assert (
        Condition(noise="pink", snr_db=10, telephone=True).describe()
        == "pink noise at 10 dB SNR, telephone band (300-3400 Hz, 8 kHz)"
    )
