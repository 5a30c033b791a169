%% @doc A test double of the `telemetry' library: the part of its API that macula_dht and its
%% tests use (`attach/4', `attach_many/4', `detach/1', `execute/3'), so that the events of
%% `macula_routing_server' can be tested without the library, which macula_dht does not depend
%% on. Compiled with the tests only (it lives in `test/', never in the application's `ebin').
%%
%% Handlers are kept in a persistent_term, in the order they were attached, and called in the
%% emitting process as `telemetry' calls them. Unlike `telemetry', which catches a failing
%% handler and detaches it, this double lets the failure out of `execute/3': that is what the
%% tests of `macula_dht_telemetry''s own guard need.
-module(telemetry).

-export([attach/4, attach_many/4, detach/1, execute/3]).

-define(HANDLERS, {?MODULE, handlers}).

-type handler_function() :: fun(([atom()], map(), map(), term()) -> term()).

-spec attach(term(), [atom()], handler_function(), term()) -> ok | {error, already_exists}.
attach(HandlerId, EventName, Function, Config) ->
    attach_many(HandlerId, [EventName], Function, Config).

-spec attach_many(term(), [[atom()]], handler_function(), term()) ->
          ok | {error, already_exists}.
attach_many(HandlerId, EventNames, Function, Config) when is_function(Function, 4) ->
    Handlers = handlers(),
    case lists:keymember(HandlerId, 1, Handlers) of
        true ->
            {error, already_exists};
        false ->
            persistent_term:put(?HANDLERS, Handlers ++ [{HandlerId, EventNames, Function, Config}])
    end.

-spec detach(term()) -> ok | {error, not_found}.
detach(HandlerId) ->
    Handlers = handlers(),
    case lists:keytake(HandlerId, 1, Handlers) of
        {value, _Handler, []} -> _ = persistent_term:erase(?HANDLERS), ok;
        {value, _Handler, Rest} -> persistent_term:put(?HANDLERS, Rest);
        false -> {error, not_found}
    end.

-spec execute([atom()], map(), map()) -> ok.
execute(EventName, Measurements, Metadata) when is_map(Measurements), is_map(Metadata) ->
    _ = [Function(EventName, Measurements, Metadata, Config)
         || {_Id, EventNames, Function, Config} <- handlers(), lists:member(EventName, EventNames)],
    ok.

handlers() ->
    persistent_term:get(?HANDLERS, []).
