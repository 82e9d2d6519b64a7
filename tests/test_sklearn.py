"""jitprop.sklearn against scikit-learn's MLPClassifier / MLPRegressor.

The drop-ins draw their initial weights and shuffles from the same
RandomState as scikit-learn and use its arithmetic, so in float64 the fits
agree up to summation order (BLAS, batch parts): the comparisons below fit
both for a few epochs and compare weights and losses with tolerances far
above rounding and far below any real difference.
"""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import joblib
import scipy.sparse as sp
from sklearn import neural_network as skn
from sklearn.datasets import (
    load_digits,
    make_classification,
    make_multilabel_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import jitprop
from jitprop.sklearn import MLPClassifier, MLPRegressor

RTOL = 1e-6  # float64 fits of a few epochs differ by summation order only (~1e-13)


# scikit-learn runs its own MLPs through these checks with max_iter=100
# (sklearn/utils/_test_common/instance_generator.py); so do we
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_import_jitprop_does_not_import_sklearn():
    code = ("import sys, jitprop, jitprop.kernels; "
            "bad = [m for m in sys.modules if m == 'sklearn' or m.startswith('sklearn.')]; "
            "assert not bad, bad; import jitprop.sklearn; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- data ---------------------------------------------------------------------------
def _digits(n=600):
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X)[:n], y[:n]


def _binary():
    X, y = make_classification(n_samples=300, n_features=12, random_state=1)
    return X, y


def _multilabel():
    X, Y = make_multilabel_classification(n_samples=300, n_features=10, n_classes=4, random_state=2)
    return StandardScaler().fit_transform(X), Y


def _regression(n_targets=1):
    X, y = make_regression(n_samples=300, n_features=8, n_targets=n_targets, noise=0.1, random_state=3)
    return X, y / y.std()


def _pair(cls_name, X, y, sample_weight=None, **params):
    ours = getattr(sys.modules[__name__], cls_name)(**params)
    theirs = getattr(skn, cls_name)(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, sample_weight=sample_weight)
        theirs.fit(X, y, sample_weight=sample_weight)
    return ours, theirs


def _assert_same_fit(ours, theirs, rtol=RTOL, atol=1e-9):
    assert len(ours.coefs_) == len(theirs.coefs_)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    for name in ("n_iter_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol)
    if hasattr(theirs, "loss_curve_"):
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
        assert ours.t_ == theirs.t_
    else:
        assert not hasattr(ours, "loss_curve_")


# -- agreement with scikit-learn (same maths, float64) ------------------------------
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_multiclass_matches_sklearn(solver, activation):
    X, y = _digits(400)
    ours, theirs = _pair("MLPClassifier", X, y, hidden_layer_sizes=(20, 15), activation=activation,
                         solver=solver, max_iter=4, random_state=0, alpha=1e-3, batch_size=64)
    _assert_same_fit(ours, theirs)
    assert ours.out_activation_ == "softmax"
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.predict_log_proba(X), theirs.predict_log_proba(X), rtol=1e-6,
                               atol=1e-9)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_binary_string_labels_match_sklearn(solver):
    X, y = _binary()
    y = np.where(y == 1, "yes", "no")
    ours, theirs = _pair("MLPClassifier", X, y, hidden_layer_sizes=(16,), solver=solver, max_iter=5,
                         random_state=1)
    _assert_same_fit(ours, theirs)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 1
    assert ours.predict_proba(X).shape == (len(X), 2)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.predict(X).dtype == theirs.predict(X).dtype


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_multilabel_matches_sklearn(solver):
    X, Y = _multilabel()
    ours, theirs = _pair("MLPClassifier", X, Y, hidden_layer_sizes=(12,), solver=solver, max_iter=5,
                         random_state=2)
    _assert_same_fit(ours, theirs)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == Y.shape[1]
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_matches_sklearn(loss, solver, n_targets):
    X, y = _regression(n_targets)
    if loss == "poisson":
        y = np.exp(0.3 * y)
    ours, theirs = _pair("MLPRegressor", X, y, loss=loss, hidden_layer_sizes=(10, 7), solver=solver,
                         max_iter=4, random_state=3, learning_rate_init=1e-3)
    _assert_same_fit(ours, theirs)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-6, atol=1e-9)
    assert ours.out_activation_ == ("exp" if loss == "poisson" else "identity")


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_schedules_and_momentum_match_sklearn(schedule, nesterov):
    X, y = _digits(300)
    # tol large so that "adaptive" divides the learning rate during the fit
    ours, theirs = _pair("MLPClassifier", X, y, hidden_layer_sizes=(10,), solver="sgd",
                         learning_rate=schedule, nesterovs_momentum=nesterov, momentum=0.8,
                         learning_rate_init=0.05, max_iter=12, tol=0.5, n_iter_no_change=2,
                         random_state=4)
    _assert_same_fit(ours, theirs)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate)


def test_adam_hyperparameters_match_sklearn():
    X, y = _digits(300)
    ours, theirs = _pair("MLPClassifier", X, y, hidden_layer_sizes=(10,), beta_1=0.8, beta_2=0.95,
                         epsilon=1e-4, learning_rate_init=0.01, max_iter=6, random_state=5)
    _assert_same_fit(ours, theirs)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_sample_weight_matches_sklearn(solver):
    X, y = _digits(300)
    sw = np.random.RandomState(0).uniform(0.1, 2.0, len(y))
    ours, theirs = _pair("MLPClassifier", X, y, sample_weight=sw, hidden_layer_sizes=(10,),
                         solver=solver, max_iter=4, random_state=6, alpha=0.01)
    _assert_same_fit(ours, theirs)
    unweighted = MLPClassifier(hidden_layer_sizes=(10,), solver=solver, max_iter=4, random_state=6,
                               alpha=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        unweighted.fit(X, y)
    assert not np.allclose(unweighted.coefs_[0], ours.coefs_[0])


@pytest.mark.parametrize("cls_name", ["MLPClassifier", "MLPRegressor"])
def test_early_stopping_matches_sklearn(cls_name):
    X, y = _digits(500) if cls_name == "MLPClassifier" else _regression()
    ours, theirs = _pair(cls_name, X, y, hidden_layer_sizes=(10,), early_stopping=True,
                         validation_fraction=0.2, n_iter_no_change=3, max_iter=60,
                         learning_rate_init=0.01, random_state=7)
    _assert_same_fit(ours, theirs)
    assert ours.best_loss_ is None and theirs.best_loss_ is None
    assert len(ours.validation_scores_) == ours.n_iter_
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-6)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_)
    assert ours.best_validation_score_ == max(ours.validation_scores_)


def test_same_random_state_gives_sklearn_initial_weights():
    X, y = _digits(200)
    # a learning rate so small that no weight moves: the fit returns the initial weights
    ours, theirs = _pair("MLPClassifier", X, y, hidden_layer_sizes=(9, 5), solver="sgd",
                         learning_rate_init=1e-300, momentum=0.0, max_iter=1, random_state=11)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_copied_weights_continue_like_sklearn():
    """Weights copied from scikit-learn into the drop-in (warm_start) train on identically."""
    X, y = _digits(300)
    params = dict(hidden_layer_sizes=(12,), solver="sgd", max_iter=3, random_state=12, warm_start=True)
    theirs = skn.MLPClassifier(**params)
    ours = MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs.fit(X, y)
        ours.fit(X, y)
        rng = np.random.RandomState(1)
        for c in theirs.coefs_:
            c += rng.normal(0, 0.1, c.shape)
        ours.coefs_ = [c.copy() for c in theirs.coefs_]
        ours.intercepts_ = [b.copy() for b in theirs.intercepts_]
        theirs.fit(X, y)
        ours.fit(X, y)
    _assert_same_fit(ours, theirs)


# -- behaviour --------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_convergence_warning(solver):
    X, y = _digits(200)
    with pytest.warns(ConvergenceWarning):
        MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=2, random_state=0).fit(X, y)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_float32_stays_float32_and_other_input_trains_in_float64(solver):
    X, y = _digits(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m32 = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=3, random_state=0)
        m32.fit(X.astype(np.float32), y)
        assert all(a.dtype == np.float32 for a in m32.coefs_ + m32.intercepts_)
        assert m32.predict_proba(X.astype(np.float32)).dtype == np.float32
        mint = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=3, random_state=0)
        mint.fit((X * 4).astype(np.int64), y)
        assert all(a.dtype == np.float64 for a in mint.coefs_ + mint.intercepts_)
        forced = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=3, random_state=0,
                               dtype="float32").fit(X, y)
        assert forced.coefs_[0].dtype == np.float32
    # float32 training follows the float64 one closely over a few epochs
    m64 = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m64.fit(X, y)
    np.testing.assert_allclose(m32.coefs_[0], m64.coefs_[0], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_sparse_input_matches_dense(fmt, solver):
    X, y = _digits(300)
    X[np.abs(X) < 0.5] = 0.0
    Xs = sp.csr_matrix(X).asformat(fmt)
    params = dict(hidden_layer_sizes=(10,), solver=solver, max_iter=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = MLPClassifier(**params).fit(X, y)
        sparse = MLPClassifier(**params).fit(Xs, y)
    _assert_same_fit(sparse, dense, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X), rtol=1e-9, atol=1e-12)


def test_sparse_formats_accepted_or_refused_like_sklearn():
    X, y = _digits(100)
    inputs = {"lil": sp.lil_matrix(X), "dok": sp.dok_matrix(X), "bsr": sp.bsr_matrix(X),
              "strings": np.array([["a", "b"]] * 4, dtype=object)}
    targets = {"strings": [0, 1, 0, 1]}
    for name, Xi in inputs.items():
        outcomes = []
        for est in (MLPClassifier(max_iter=2), skn.MLPClassifier(max_iter=2)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    est.fit(Xi, targets.get(name, y))
                outcomes.append("fitted")
            except Exception as e:  # noqa: BLE001 - the outcome is what we compare
                outcomes.append(type(e))
        assert outcomes[0] == outcomes[1], (name, outcomes)
    with pytest.raises(ValueError):
        MLPClassifier().fit(inputs["strings"], targets["strings"])


def test_partial_fit_classes_and_solver_rules():
    X, y = _digits(300)
    ours = MLPClassifier(hidden_layer_sizes=(10,), solver="sgd", random_state=0)
    theirs = skn.MLPClassifier(hidden_layer_sizes=(10,), solver="sgd", random_state=0)
    with pytest.raises(ValueError):
        ours.partial_fit(X, y)  # classes= is required on the first call
    for _ in range(3):
        ours.partial_fit(X, y, classes=np.arange(10))
        theirs.partial_fit(X, y, classes=np.arange(10))
    _assert_same_fit(ours, theirs)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert hasattr(skn.MLPRegressor(solver="lbfgs"), "partial_fit") == \
        hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))


def test_get_set_params_and_constructor_order_match_sklearn():
    import inspect

    for ours, theirs in ((MLPClassifier, skn.MLPClassifier), (MLPRegressor, skn.MLPRegressor)):
        po = list(inspect.signature(ours).parameters.values())
        pt = list(inspect.signature(theirs).parameters.values())
        assert [(p.name, p.default, p.kind) for p in po[:len(pt)]] == \
            [(p.name, p.default, p.kind) for p in pt]
        assert [p.name for p in po[len(pt):]] == ["dtype"]
        est = ours().set_params(alpha=0.5, hidden_layer_sizes=(3, 4))
        assert est.get_params()["alpha"] == 0.5 and est.get_params()["hidden_layer_sizes"] == (3, 4)
    with pytest.raises(ValueError):
        MLPClassifier(solver="newton").fit(*_digits(50))


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_pickle_and_joblib_roundtrip(tmp_path, solver):
    X, y = _digits(300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(10,), solver=solver, max_iter=5, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    joblib.dump(est, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    if solver == "adam":  # the optimizer state survives: partial_fit continues identically
        a, b = pickle.loads(pickle.dumps(est)), pickle.loads(pickle.dumps(est))
        a.partial_fit(X, y)
        b.partial_fit(X, y)
        np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_results_do_not_depend_on_thread_count():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    X, y = make_classification(n_samples=2000, n_features=40, n_informative=20, n_classes=3,
                               random_state=0)
    old = jitprop.get_num_threads()
    fits = []
    try:
        for n in (1, 2):
            jitprop.set_num_threads(n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fits.append(MLPClassifier(hidden_layer_sizes=(64,), max_iter=3, random_state=0).fit(X, y))
    finally:
        jitprop.set_num_threads(old)
    for f in fits[1:]:
        for a, b in zip(f.coefs_ + f.intercepts_, fits[0].coefs_ + fits[0].intercepts_):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_pipeline_gridsearch_cross_val_score_n_jobs_2(backend):
    X, y = _digits(600)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=40,
                                                         learning_rate_init=0.01, random_state=0))
    with warnings.catch_warnings(), joblib.parallel_backend(backend):
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X, y, cv=3, n_jobs=2)
        serial = cross_val_score(pipe, X, y, cv=3, n_jobs=1)
        gs = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2).fit(X, y)
    assert scores.shape == (3,) and scores.min() > 0.75
    # a worker may run the batch in fewer parts (joblib gives each process
    # NUMBA_NUM_THREADS = cores // n_jobs), which changes only the rounding
    np.testing.assert_allclose(scores, serial, atol=0.02)
    assert gs.best_score_ > 0.75 and gs.best_estimator_.score(X, y) > 0.75


def test_worker_threads_policy():
    """Inside a joblib worker thread a fit runs its Numba loops on one thread."""
    from joblib import Parallel, delayed

    def threads_inside():
        from jitprop.sklearn._estimators import _WorkerThreads

        with _WorkerThreads():
            import numba

            return numba.get_num_threads()

    got = Parallel(n_jobs=2, backend="threading")(delayed(threads_inside)() for _ in range(2))
    assert got == [1, 1]
    assert threads_inside() == jitprop.get_num_threads()  # the main thread keeps its threads


@pytest.mark.slow
def test_bench_vs_sklearn_runs(tmp_path):
    out = tmp_path / "skl.json"
    subprocess.run([sys.executable, "-m", "jitprop.bench", "--vs", "sklearn", "--quick", "--datasets", "wine",
                    "--solvers", "adam", "--threads", "1", "--json", str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    import json

    (row,) = json.loads(out.read_text())["rows"]
    assert row["ok"] and row["dataset"] == "wine" and row["threads"] == 1
    assert row["jitprop"]["fit_s"] > 0 and row["sklearn"]["fit_s"] > 0 and row["first_call_s"] > 0
    assert row["products_s"] > 0 and row["ceiling"] == pytest.approx(row["sklearn"]["fit_s"] / row["products_s"])
    # same parameters and random_state: the same number of epochs, the same test accuracy to rounding
    assert row["jitprop"]["n_iter"] == row["sklearn"]["n_iter"]
    assert abs(row["score_diff_points"]) <= 1.0


def test_bench_products_bound_runs_the_products_of_an_epoch(monkeypatch):
    """The ceiling's products: per batch (4, 4, 2 rows of 10), each layer's
    forward and weight gradient, and every input gradient but the first
    layer's, in the dtype asked for."""
    from jitprop.bench.vs_sklearn import products_time

    calls = []
    dot = np.dot

    def counting(a, b, out):
        calls.append((a.shape, b.shape, out.dtype))
        return dot(a, b, out)

    monkeypatch.setattr(np, "dot", counting)
    assert products_time([5, 3, 2], 10, 4, np.float32, repeats=1) > 0
    per_epoch = [(m, s) for m in (4, 4, 2) for s in [((m, 5), (5, 3)), ((m, 3), (3, 2)),    # forward
                                                       ((3, m), (m, 2)), ((m, 2), (2, 3)),    # layer 2: dW, dx
                                                       ((5, m), (m, 3))]]                     # layer 1: dW only
    assert [(a, b) for a, b, _ in calls] == [s for _, s in per_epoch] * 2  # warm-up epoch, then one timed
    assert {dt for _, _, dt in calls} == {np.dtype(np.float32)}
