from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0003_users')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ScheduleFire',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.CharField(max_length=200)),
                ('schedule', fields.CharField(max_length=100)),
                ('fire_time', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('outcome', fields.CharField(max_length=16)),
                ('run', fields.ForeignKeyField('models.Run', source_field='run_id', null=True, db_constraint=True, to_field='id', related_name='fires', on_delete=OnDelete.SET_NULL)),
                ('detail', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'schedule_fires', 'app': 'models', 'unique_together': (('workflow', 'schedule', 'fire_time'),), 'pk_attr': 'id', 'table_description': 'One fire time of a schedule: started (with its run), missed, or skipped. Unique per fire time,'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ScheduleState',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.CharField(max_length=200)),
                ('name', fields.CharField(max_length=100)),
                ('paused', fields.BooleanField(default=False)),
                ('paused_by', fields.CharField(null=True, max_length=200)),
                ('first_seen_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'schedule_states', 'app': 'models', 'unique_together': (('workflow', 'name'),), 'pk_attr': 'id', 'table_description': 'A schedule of a workflow as the server knows it: since when, and whether a person paused it.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Run',
            name='schedule',
            field=fields.CharField(null=True, max_length=100),
        ),
        ops.AddField(
            model_name='Run',
            name='scheduled_for',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
