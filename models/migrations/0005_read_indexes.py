"""Indexes for the queries of pages and jobs at 100k runs: the runs list filtered by status (newest
first), the prune by finish time, and deleting a run's LLM usage and schedule fires."""

from tortoise import migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0004_schedules")]

    initial = False

    operations = [
        ops.AddIndex(model_name="Run", index=Index(fields=("status", "id"), name="runs_status_id")),
        ops.AddIndex(model_name="Run", index=Index(fields=("finished_at",), name="runs_finished_at")),
        ops.AddIndex(model_name="LlmUsage", index=Index(fields=("run_id",), name="llm_usage_run_id")),
        ops.AddIndex(model_name="ScheduleFire", index=Index(fields=("run_id",), name="schedule_fires_run_id")),
    ]
