import pytest

from r1lab.evaluation.scoring import cons_at_k, has_reflection, pass_at_1, pass_at_k, reflection_rate


def test_pass_at_k_hand_values():
    # n=4, c=1, k=1: 1 - C(3,1)/C(4,1) = 1 - 3/4
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(8, 5, 4) == 1.0  # fewer than k wrong samples: some draw of k must contain a right one
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_at_1_is_mean_over_samples():
    assert pass_at_1([True, False, False, True]) == 0.5
    assert pass_at_1([]) == 0.0
    # pass@1 equals unbiased pass@k with k=1
    assert pass_at_1([True, False, False]) == pytest.approx(pass_at_k(3, 1, 1))


def test_cons_at_k_majority():
    # "7" has 3 votes, "8" has 2: the majority is right
    assert cons_at_k(["7", "7", "8", "7", "8"], [True, True, False, True, False]) == 1.0
    # the majority is wrong although one sample is right
    assert cons_at_k(["8", "8", "7"], [False, False, True]) == 0.0


def test_cons_at_k_ties_and_missing_answers():
    # tie 2-2 between a right and a wrong answer: expected score of a random tie-break = 1/2
    assert cons_at_k(["7", "8", "7", "8"], [True, False, True, False]) == 0.5
    # three-way tie with one right: 1/3, whatever the order
    assert cons_at_k(["a", "b", "c"], [False, True, False]) == pytest.approx(1 / 3)
    assert cons_at_k(["c", "a", "b"], [False, False, True]) == pytest.approx(1 / 3)
    # samples without an answer do not vote: "7" wins 1-0 over three Nones
    assert cons_at_k([None, None, None, "7"], [False, False, False, True]) == 1.0
    assert cons_at_k([None, None], [False, False]) == 0.0


def test_reflection_rate_whole_words_any_case():
    texts = ["9+3=12 , Wait , 9+3=12", "let me check this", "awaiting nothing", "plain"]
    assert reflection_rate(texts) == 0.5  # "awaiting" is not "wait"
    assert has_reflection("RECHECK: 2+2=4")
    assert not has_reflection("waiter")
    assert reflection_rate(["hmm"], phrases=("wait",)) == 0.0
