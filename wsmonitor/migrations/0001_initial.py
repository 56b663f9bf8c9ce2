from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='Console',
            fields=[
                ('id', models.AutoField(primary_key=True, serialize=False)),
            ],
            options={
                'permissions': [('view_console', 'Can view the WebSocket console'), ('close_sessions', 'Can close WebSocket sessions from the console')],
                'managed': False,
                'default_permissions': (),
            },
        ),
    ]
