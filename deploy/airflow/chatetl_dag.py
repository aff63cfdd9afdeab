"""chatetl run by Airflow instead of its own daemon: one task per group of jobs and day.

Each task runs `chatetl run --job JOB --from {{ ds }} --to {{ ds }} --json` (the day Airflow's
data interval starts, in the job's zone) and reads the JSON summary chatetl prints as the last
line of stdout. Airflow retries a task whose failure a retry can fix (exit 1: an outage, the
warehouse; 130: interrupted) and fails at once where a person must act (2: the configuration,
3: refused credentials, 4: a refused request or an unreadable answer): `run_chatetl` raises
`AirflowFailException` for those. A rerun of a day (clear the task) reloads exactly that day. Jobs that differ only in their
aggregations share one request per chunk when they run in one task (`--job` repeated), so the
DAG groups them. With a BashOperator instead, the same is
`bash_command="chatetl run --job real_chats --from {{ ds }} --to {{ ds }} --json"`, whose last
stdout line (the summary) becomes its XCom; it retries every failure, the refused ones included.

`ds` is the logical date of the data interval, which Airflow counts in UTC; with the 06:30
Helsinki schedule it is the Helsinki day that just ended. For a job whose day ends later than
the run (a zone west of UTC, a large `settle_secs`), chatetl refuses a day that is not complete
yet (exit 2, no retry): schedule the DAG after the day has ended in the job's zone.

Put this file in the DAGs folder, with the `chatetl` binary on the workers' PATH (or CHATETL_BIN)
and CHATETL_CONFIG naming chatetl.yaml; the credentials come from the workers' environment.
The function needs nothing but the standard library, so it can be used outside Airflow too.
"""

import json
import os
import subprocess

# Exit codes (README, "Commands") that another try cannot fix.
NOT_RETRYABLE = {2, 3, 4}


class ChatetlFailed(Exception):
    """A run that failed and that a retry can fix (exit 1 or 130)."""


class ChatetlNeedsAFix(Exception):
    """A run that failed for a reason a retry cannot fix (exit 2, 3 or 4)."""


try:  # Airflow's own exceptions when it is there: AirflowFailException skips the retries.
    from airflow.exceptions import AirflowException, AirflowFailException

    ChatetlFailed = type("ChatetlFailed", (AirflowException,), {"__doc__": ChatetlFailed.__doc__})  # noqa: F811
    ChatetlNeedsAFix = type("ChatetlNeedsAFix", (AirflowFailException,), {"__doc__": ChatetlNeedsAFix.__doc__})  # noqa: F811
except ImportError:
    pass


def command(jobs, day):
    """The command of one task: the windows of `day` (YYYY-MM-DD; `{{ ds }}` in Airflow) of
    `jobs` (names or globs)."""
    selected = [arg for job in jobs for arg in ("--job", job)]
    return [os.environ.get("CHATETL_BIN", "chatetl"), "run", *selected, "--from", day, "--to", day, "--json"]


def run_chatetl(jobs, day, env=None):
    """Runs one task and returns chatetl's JSON summary; raises ChatetlFailed (retry) or
    ChatetlNeedsAFix (no retry) naming the exit code and the errors."""
    done = subprocess.run(command(jobs, day), capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if done.returncode == 0:
        return summary
    errors = [e["message"] for e in summary["errors"]] if summary else [done.stderr.strip()[-2000:]]
    message = f"chatetl run {' '.join(command(jobs, day)[2:])} exited {done.returncode}: " + "; ".join(errors)
    if done.returncode in NOT_RETRYABLE:
        raise ChatetlNeedsAFix(message)
    raise ChatetlFailed(message)


try:
    import pendulum
    from airflow.decorators import dag, task
except ImportError:  # imported outside Airflow (tests, scripts): the function above is all there is
    dag = None

if dag is not None:
    # Task name: the jobs it runs (a trio that shares its requests, a glob, one job).
    TASKS = {
        "real_chats": ["real_chats", "messages_in_real_chats", "sales_in_real_chats"],
        "real_chats_with_sales": ["real_chats_with_sales", "purchases_in_real_chats", "average_purchase_value_in_real_chats"],
        "events_and_workflow": ["average_*_wait_time", "bot_clicks", "chat_invitations"],
    }

    @dag(
        dag_id="chatetl",
        schedule="30 6 * * *",
        start_date=pendulum.datetime(2024, 1, 1, tz="Europe/Helsinki"),
        catchup=True,
        max_active_runs=4,
        default_args={"retries": 3, "retry_delay": pendulum.duration(minutes=10)},
        tags=["chatetl"],
    )
    def chatetl_daily():
        for name, jobs in TASKS.items():

            # One day at a time per group: runs of other days would find the jobs' run lock
            # taken (exit 1) and burn their retries while catchup fills the past.
            @task(task_id=name, max_active_tis_per_dag=1)
            def load(jobs=jobs, ds=None):
                return run_chatetl(jobs, ds)

            load()

    chatetl_daily()
