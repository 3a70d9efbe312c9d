"""Train a small CNN on the 8x8 digits with TensorFlow/Keras: an ffdl example learner.

Run with the TensorFlow virtual environment (scripts/lib.sh,
install_tensorflow_venv):

    DATA_DIR=/tmp/digits RESULT_DIR=/tmp/r CHECKPOINT_DIR=/tmp/c \\
        .venv-tf/bin/python3 train.py [--epochs 8] [--lr 0.05] [--batch-size 32] [--seed 0]

The data comes from examples/prepare_digits.py: $DATA_DIR/train.npz and
$DATA_DIR/test.npz, each with x float32 (n, 8, 8) and y int64.

Environment:
    DATA_DIR        where train.npz and test.npz are (required)
    RESULT_DIR      where model.keras and metrics.json go (chief only)
    CHECKPOINT_DIR  checkpoint.npz is written here after every epoch (chief
                    only); when one is there at start, training resumes from
                    it. Only the chief reads it and sends it to the others.
    LOG_DIR         optional; each worker also appends its log lines to
                    LOG_DIR/train-<type><index>.log
    TF_CONFIG       when it names more than one worker, train data-parallel
                    with tf.distribute.MultiWorkerMirroredStrategy, e.g.
                    {"cluster": {"worker": ["127.0.0.1:P1", "127.0.0.1:P2"]},
                     "task": {"type": "worker", "index": 0}}
                    Worker 0 (or the task of type "chief") is the chief.

Every worker prints, per epoch and at the end (the platform parses these):

    epoch 3 loss 0.1234 accuracy 0.9611
    final test accuracy 0.9722

where loss is the mean training loss of the epoch over all workers (the same
line on every worker) and accuracy is the test accuracy after that epoch.
--batch-size is per worker. Training is a plain tf.distribute loop, not
model.fit, which in Keras 3 fails under MultiWorkerMirroredStrategy.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import argparse
import json
import sys
import time

import numpy as np
import tensorflow as tf
import keras

CHECKPOINT_NAME = "checkpoint.npz"
_log_file = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a small CNN on the digits.")
    parser.add_argument("--epochs", type=int, default=8, help="total epochs to train (default 8)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per worker (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def log(message):
    """Print one line to stdout, flushed, and copy it to the log file if any."""
    print(message, flush=True)
    if _log_file is not None:
        _log_file.write(message + "\n")
        _log_file.flush()


def open_log_file(task_name):
    global _log_file
    log_dir = os.environ.get("LOG_DIR")
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        _log_file = open(os.path.join(log_dir, f"train-{task_name}.log"), "a")


def read_cluster():
    """From TF_CONFIG: (number of workers, is this the chief, task name)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    task = config.get("task", {})
    task_type = task.get("type", "worker")
    index = int(task.get("index", 0))
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if "chief" in cluster:
        is_chief = task_type == "chief"
    else:
        is_chief = task_type == "worker" and index == 0
    return max(workers, 1), is_chief, f"{task_type}{index}"


def make_strategy(num_workers):
    """Set CPU threads, then pick the strategy; both must precede any TF op."""
    # The model is tiny: one thread per op is as fast, and it stays fast when
    # several learners share the cores.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if num_workers == 1:
        return tf.distribute.get_strategy()
    ring = tf.distribute.experimental.CommunicationImplementation.RING
    options = tf.distribute.experimental.CommunicationOptions(implementation=ring)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def load_split(data_dir, name):
    with np.load(os.path.join(data_dir, f"{name}.npz")) as data:
        return data["x"][..., np.newaxis], data["y"]  # x: (n, 8, 8, 1)


def make_train_dataset(x, y, global_batch_size, seed):
    """Shuffled batches; under the strategy each worker keeps its share."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(global_batch_size).with_options(options)


def build_model(lr):
    """Two 3x3 convolutions, one 2x2 max pool, two dense layers."""
    model = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    # Compiled only so that the saved model.keras carries loss and optimizer;
    # the training itself is make_train_step's loop.
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)  # so its state can be restored
    return model


def make_train_step(strategy, model):
    """A compiled step: each replica computes its gradients, the optimizer
    sums them over all replicas and applies them; returns the batch's loss."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            # Divided by the global batch size, so the summed gradient is the mean.
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        losses = strategy.run(replica_step, args=(x, y))
        return strategy.reduce("SUM", losses, axis=None)

    return train_step


def train_one_epoch(train_step, dataset):
    """One pass over this worker's share; the mean batch loss over all workers."""
    total, batches = 0.0, 0
    for x, y in dataset:
        total += float(train_step(x, y))
        batches += 1
    return total / max(batches, 1)


def test_accuracy(model, x, y):
    """Accuracy on the whole test set, computed locally on every worker."""
    predictions = np.argmax(model(x, training=False).numpy(), axis=1)
    return float(np.mean(predictions == y))


def training_state(model):
    """All the arrays a checkpoint holds: model weights, then optimizer state."""
    return [np.asarray(v) for v in model.get_weights()] + \
        [v.numpy() for v in model.optimizer.variables]


def restore_state(model, arrays):
    n = len(model.get_weights())
    model.set_weights(arrays[:n])
    for variable, value in zip(model.optimizer.variables, arrays[n:]):
        variable.assign(value)


def load_checkpoint(checkpoint_dir):
    """Return (epoch, arrays) from the checkpoint, or (0, None) without one."""
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    if not path or not os.path.exists(path):
        return 0, None
    with np.load(path) as data:
        count = int(data["count"])
        return int(data["epoch"]), [data[f"a{i}"] for i in range(count)]


def save_checkpoint(checkpoint_dir, model, epoch):
    """Write the checkpoint atomically: a crash mid-write keeps the old one."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
    arrays = training_state(model)
    tmp = path + ".tmp.npz"
    np.savez(tmp, epoch=epoch, count=len(arrays), **{f"a{i}": a for i, a in enumerate(arrays)})
    os.replace(tmp, path)


def broadcast_from_chief(strategy, is_chief, arrays):
    """Give every worker the chief's arrays: a sum where the others add zeros.

    The all-reduce packs its inputs together, so they travel as float64 (exact
    for the float32 weights and the integer counters) and are cast back.
    """
    mine = [(a if is_chief else np.zeros_like(a)).astype(np.float64) for a in arrays]

    @tf.function
    def sum_over_workers():
        context = tf.distribute.get_replica_context()
        return context.all_reduce("sum", [tf.constant(a) for a in mine])

    summed = strategy.run(sum_over_workers)
    local = [strategy.experimental_local_results(t)[0].numpy() for t in summed]
    return [value.astype(a.dtype) for value, a in zip(local, arrays)]


def resume(strategy, num_workers, is_chief, model, checkpoint_dir):
    """Restore the chief's checkpoint on every worker; return its epoch."""
    epoch, arrays = load_checkpoint(checkpoint_dir) if is_chief else (0, None)
    if num_workers > 1:
        # The first value says whether there is a checkpoint and which epoch.
        current = training_state(model)
        header = np.array([epoch], dtype=np.int64)
        shared = broadcast_from_chief(strategy, is_chief, [header] + (arrays or current))
        epoch, arrays = int(shared[0][0]), shared[1:]
    if epoch > 0:
        restore_state(model, arrays)
    return epoch


def write_results(result_dir, model, accuracy, loss, args, num_workers, seconds):
    os.makedirs(result_dir, exist_ok=True)
    model.save(os.path.join(result_dir, "model.keras"))
    metrics = {
        "framework": "tensorflow",
        "final_test_accuracy": round(accuracy, 4),
        "final_train_loss": None if loss is None else round(loss, 4),
        "epochs": args.epochs,
        "world_size": num_workers,
        "train_seconds": round(seconds, 2),
    }
    with open(os.path.join(result_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    num_workers, is_chief, task_name = read_cluster()
    strategy = make_strategy(num_workers)
    open_log_file(task_name)
    data_dir = os.environ.get("DATA_DIR")
    if not data_dir:
        sys.exit("train.py: DATA_DIR is not set")
    result_dir = os.environ.get("RESULT_DIR")
    checkpoint_dir = os.environ.get("CHECKPOINT_DIR")
    started = time.monotonic()

    keras.utils.set_random_seed(args.seed)
    x_train, y_train = load_split(data_dir, "train")
    x_test, y_test = load_split(data_dir, "test")
    log(f"{task_name} of {num_workers} worker(s): {len(y_train)} train, {len(y_test)} test, "
        f"chief={is_chief}")
    train_set = make_train_dataset(x_train, y_train, args.batch_size * num_workers, args.seed)

    with strategy.scope():
        model = build_model(args.lr)
    start_epoch = resume(strategy, num_workers, is_chief, model, checkpoint_dir)
    if start_epoch > 0:
        log(f"resuming from epoch {start_epoch}")

    dataset = strategy.experimental_distribute_dataset(train_set)
    train_step = make_train_step(strategy, model)
    loss = None
    for epoch in range(start_epoch + 1, args.epochs + 1):
        loss = train_one_epoch(train_step, dataset)
        accuracy = test_accuracy(model, x_test, y_test)
        log(f"epoch {epoch} loss {loss:.4f} accuracy {accuracy:.4f}")
        if is_chief and checkpoint_dir:
            save_checkpoint(checkpoint_dir, model, epoch)

    accuracy = test_accuracy(model, x_test, y_test)
    log(f"final test accuracy {accuracy:.4f}")
    if is_chief and result_dir:
        write_results(result_dir, model, accuracy, loss, args, num_workers,
                      time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
