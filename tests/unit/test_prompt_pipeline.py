from scalerl.trainer_service.config import PromptPipelineConfig
from scalerl.trainer_service.prompt_pipeline import PromptScheduler

IDS = [f"p{i}" for i in range(10)]


def test_epochs_cover_every_prompt_once_and_are_seeded():
    s = PromptScheduler(IDS, PromptPipelineConfig(), seed=3)
    first = s.next_prompts(10)
    assert sorted(first) == sorted(IDS) and s.epoch == 0
    second = s.next_prompts(10)
    assert sorted(second) == sorted(IDS) and s.epoch == 1 and second != first
    again = PromptScheduler(IDS, PromptPipelineConfig(), seed=3)
    assert again.next_prompts(20) == first + second


def test_no_positive_resampling_retires_easy_prompts_from_later_epochs():
    s = PromptScheduler(IDS, PromptPipelineConfig(npr_threshold=0.9), seed=0)
    batch = s.next_prompts(4)
    s.record(batch[0], 0.9375)  # 15/16 >= 0.9: retired
    s.record(batch[1], 0.5)
    rest = s.next_prompts(6)  # the current epoch still finishes as planned
    assert sorted(batch + rest) == sorted(IDS)
    later = s.next_prompts(27)
    assert batch[0] not in later and batch[1] in later and s.n_retired == 1


def test_npr_switch_off_keeps_everything():
    s = PromptScheduler(IDS, PromptPipelineConfig(no_positive_resampling=False))
    for p in IDS:
        s.record(p, 1.0)
    assert sorted(s.next_prompts(20)) == sorted(IDS * 2)


def test_all_retired_does_not_stall():
    s = PromptScheduler(IDS[:2], PromptPipelineConfig())
    s.next_prompts(2)
    s.record("p0", 1.0)
    s.record("p1", 1.0)
    assert sorted(s.next_prompts(2)) == ["p0", "p1"]


def test_state_round_trip_resumes_exactly():
    a = PromptScheduler(IDS, PromptPipelineConfig(), seed=5)
    a.next_prompts(7)
    a.record("p3", 0.95)
    b = PromptScheduler(IDS, PromptPipelineConfig(), seed=5)
    b.load_state_dict(a.state_dict())
    assert a.next_prompts(25) == b.next_prompts(25)


def test_a_pool_below_min_live_brings_every_prompt_back():
    s = PromptScheduler(IDS, PromptPipelineConfig(min_live=0.5), seed=1)
    s.next_prompts(10)
    for p in IDS[:5]:
        s.record(p, 1.0)
    assert sorted(s.next_prompts(5)) == IDS[5:]  # 5 of 10 live: not below half, NPR holds
    s.record(IDS[5], 1.0)
    assert sorted(s.next_prompts(10)) == sorted(IDS)  # 4 live < 5: a full epoch again
