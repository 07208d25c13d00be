# The example service's image: the web app, Celery worker, beat and relay all run from it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY outbox ./outbox
COPY inbox ./inbox
COPY inbox_outbox ./inbox_outbox
RUN pip install --no-cache-dir ".[example]"
COPY . .
EXPOSE 8000
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000"]
