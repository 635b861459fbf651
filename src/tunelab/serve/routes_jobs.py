"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints (logic in ``jobs``)."""

from .errors import APIError
from .jobs_config import RequestError


def _api(exc: RequestError) -> APIError:
    kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
    return APIError(exc.status, str(exc), type=kind, param=exc.param, code=exc.code)


def _page(data: list, has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def router(state):
    from fastapi import APIRouter, Body

    jobs = state.jobs
    api = APIRouter()

    def call(function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RequestError as exc:
            raise _api(exc) from None

    @api.post("/v1/fine_tuning/jobs")
    def create_job(body: dict = Body(...)):
        return call(jobs.create, body)

    @api.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = 20):
        return _page(*call(jobs.list, after, limit))

    @api.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str):
        return call(jobs.get, job_id)

    @api.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return call(jobs.cancel, job_id)

    @api.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(job_id: str, after: str | None = None, limit: int = 20):
        return _page(*call(jobs.events, job_id, after, limit))

    @api.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        return _page(*call(jobs.checkpoints, job_id, after, limit))

    return api
